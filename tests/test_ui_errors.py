"""bedgen.ui.errors: what a failed event tells the visitor and writes to the log."""

import logging

import gradio as gr
import pytest

from bedgen.core.errors import BedgenError
from bedgen.ui.errors import QUOTE_LIMIT, clipped_message, reported, toast_text


def _raise(error):
    def fn(*args, **kwargs):
        raise error

    return fn


def test_a_user_error_is_one_clipped_line_in_the_pop_up_and_one_line_in_the_log(caplog):
    junk = "x" * 2**20
    with caplog.at_level(logging.INFO, logger="bedgen.ui"):
        with pytest.raises(gr.Error) as raised:
            reported(_raise(BedgenError(f"seed must be a whole number, got {junk!r}")), "generation")()
    message = raised.value.message
    assert message.startswith("seed must be a whole number, got 'xxx") and message.endswith("…'")
    assert len(message) < len("seed must be a whole number, got ''") + QUOTE_LIMIT + 1
    assert not raised.value.print_exception  # Gradio prints no traceback either
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "\n" not in record.getMessage() and len(record.getMessage()) < 200


def test_a_bug_logs_its_traceback_once_and_shows_a_generic_line_without_server_paths(caplog):
    with caplog.at_level(logging.INFO, logger="bedgen.ui"):
        with pytest.raises(gr.Error) as raised:
            reported(_raise(RuntimeError("/srv/bedgen/secret/file.pt is corrupt " + "x" * 2**20)), "generation")()
    message = raised.value.message
    assert "/srv" not in message and "generation failed unexpectedly" in message
    [record] = caplog.records
    logged = record.getMessage()
    assert record.levelno == logging.ERROR and "Traceback" in logged and "in fn" in logged
    assert "RuntimeError: /srv/bedgen/secret/file.pt is corrupt xxx" in logged and len(logged) < 5000


@pytest.mark.parametrize("text, kept", [
    ("model 'ab' is neither a local directory", "model 'ab' is neither a local directory"),
    ("the model's default is used; 'short' stays", "the model's default is used; 'short' stays"),
    ("multi\nline   text", "multi line text"),
])
def test_short_messages_are_kept(text, kept):
    assert clipped_message(BedgenError(text)) == kept


def test_junk_without_quotes_is_capped_as_a_whole():
    assert len(clipped_message(BedgenError("a b " * 2**18))) <= 400


def test_the_pop_up_shows_no_markdown_backticks():
    text = toast_text("no index yet; build one with `bedgen index --data SRC --out indexes/NAME` <now> & later")
    assert "`" not in text and "bedgen index --data SRC --out indexes/NAME" in text
    assert "&lt;now>" in text and "&amp; later" in text  # the pop-up renders HTML


def test_an_input_refused_while_read_fails_the_event_before_it_runs():
    from bedgen.ui.errors import RefusedInput

    ran = []
    with pytest.raises(gr.Error, match="Image A must be an image uploaded to this app"):
        reported(lambda a, b: ran.append(1), "interpolation")(
            RefusedInput("Image A must be an image uploaded to this app; upload it again"), None)
    assert not ran


def test_bedgen_inputs_render_as_the_stock_components():
    """The browser picks a component's code by its block name: a template subclass must
    name the stock component it stands in for, or the page never finishes loading."""
    from bedgen.ui.components import Checkboxes, Choice, ImageUpload, Options, RawNumber, RawSlider

    expected = {Choice: "dropdown", Options: "radio", Checkboxes: "checkboxgroup", RawNumber: "number",
                RawSlider: "slider", ImageUpload: "image"}
    for component, name in expected.items():
        assert component(label="x").get_block_name() == name, component


def test_a_value_outside_the_choices_is_one_clipped_line_naming_the_field():
    from bedgen.ui.components import Checkboxes, Choice, Options
    from bedgen.ui.errors import RefusedInput

    junk = "€x" * 2**19
    for component in (Choice(["a", "b"], label="Sampler"), Options(["a", "b"], label="Method")):
        refused = component.preprocess(junk)
        assert isinstance(refused, RefusedInput) and refused.message.startswith(component.label + " must be one of")
        assert len(refused.message) < 200
        assert component.preprocess("a") == "a"
    refused = Checkboxes(["a", "b"], label="Metrics").preprocess([junk])
    assert isinstance(refused, RefusedInput) and len(refused.message) < 200
def test_a_streaming_event_stays_a_generator_and_a_failure_between_updates_is_reported(caplog):
    import inspect

    def stream(n):
        yield "preview"
        raise BedgenError(f"steps must be between 1 and 1000, got {n!r}")

    wrapped = reported(stream, "generation")
    assert inspect.isgeneratorfunction(wrapped)  # what makes Gradio stream its updates
    updates = wrapped(5000)
    assert next(updates) == "preview"
    with caplog.at_level(logging.INFO, logger="bedgen.ui"):
        with pytest.raises(gr.Error, match="steps must be between 1 and 1000, got 5000"):
            next(updates)
    [record] = caplog.records
    assert record.levelno == logging.WARNING


def test_a_streaming_event_refuses_a_refused_input_before_its_first_update():
    from bedgen.ui.errors import RefusedInput

    def stream(a):
        yield "never"

    with pytest.raises(gr.Error, match="Image A must be an image"):
        next(reported(stream, "interpolation")(RefusedInput("Image A must be an image uploaded to this app")))


def test_closing_a_streaming_event_is_no_failure(caplog):
    closed = []

    def stream():
        try:
            yield "preview"
            yield "more"
        finally:
            closed.append(True)

    updates = reported(stream, "generation")()
    next(updates)
    with caplog.at_level(logging.INFO, logger="bedgen.ui"):
        updates.close()  # Gradio closes the stream of a cancelled event
    assert closed == [True] and not caplog.records
