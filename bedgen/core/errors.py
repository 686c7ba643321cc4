"""User-facing errors.

Everything the user can fix (a bad argument, a missing model, an unreachable Hub)
raises :class:`BedgenError` with a one-line message that says what to do. The CLI
turns it into ``bedgen: error: ...`` and exit code 2; the app into ``gr.Error``.
Anything else is a bug and keeps its traceback.
"""


class BedgenError(Exception):
    """An error caused by input the user can correct; the message is shown as is."""


class ModelNotFoundError(BedgenError):
    """A model REF that is neither a local checkpoint nor a reachable Hub repo."""


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
