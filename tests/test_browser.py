"""The app in a real headless Chromium (Debian's package), driven by Playwright."""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed; tests/run.sh installs it from Debian"),
]

# As root in a container, Chromium needs --no-sandbox; the other flags keep it from
# calling home on a machine without internet.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(app_server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_server.url, wait_until="domcontentloaded")
        page.wait_for_selector("#generate-button", timeout=60_000)
        yield page
        browser.close()


def test_output_galleries_are_not_drop_zones(page):
    page.locator("#generate-gallery").wait_for(state="visible")
    assert page.get_by_text("Drop Media Here").count() == 0


def test_click_generate_shows_images(page, tmp_path):
    page.click("#generate-button")
    images = page.locator("#generate-gallery img")
    images.first.wait_for(state="visible", timeout=60_000)
    assert images.count() >= 1
    page.wait_for_function(
        "() => [...document.querySelectorAll('#generate-gallery img')].some(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    # The gallery shows x̂₀ previews first; the status names the samples once they are done.
    page.locator("#generate-status").get_by_text("image(s) from").wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "generate.png"))


def test_bad_model_shows_an_error_and_the_page_still_works(page):
    model = page.get_by_label("Model")
    model.fill("no such model")
    model.press("Enter")
    page.click("#generate-button")
    page.get_by_text("is neither a local directory nor a Hub id").first.wait_for(timeout=30_000)


def _upload(page, elem_id, path):
    # gr.Image keeps a hidden <input type=file> inside its drop zone.
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id} img").first.wait_for(state="visible", timeout=30_000)


def _loaded_images(page, selector, count):
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{selector}')].filter(i => i.complete && i.naturalWidth > 0).length >= {count}",
        timeout=60_000,
    )


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    from synthetic import write_rooms

    return write_rooms(tmp_path_factory.mktemp("browser-rooms"), 2, size=40, seed=5)


def test_interpolate_tab_upload_two_images_move_the_slider_see_frames(page, rooms, tmp_path):
    page.get_by_role("tab", name="Interpolate").click()
    _upload(page, "interp-a", rooms[0])
    _upload(page, "interp-b", rooms[1])
    page.click("#interp-button")
    page.get_by_text("frame(s)").first.wait_for(timeout=60_000)
    _loaded_images(page, "#interp-frames img", 8)
    assert "noise, t = 0.5" in page.locator("#interp-status").inner_text()
    # 16 px frames are shown at least 256 px high, the animation and the strip too.
    for selector in ("#interp-frames img", "#interp-gif img", "#interp-strip img"):
        _loaded_images(page, selector, 1)
        assert page.locator(selector).first.evaluate("i => i.naturalHeight") >= 256, selector
    # Moving λ recomputes the middle image; the status then reports a single frame.
    slider = page.locator("#interp-weight input[type=range]")
    slider.fill("0.8")
    slider.dispatch_event("change")
    slider.dispatch_event("pointerup")
    page.get_by_text("1 frame(s)").first.wait_for(timeout=60_000)
    _loaded_images(page, "#interp-middle img", 1)
    page.screenshot(path=str(tmp_path / "interpolate.png"))


def test_dragging_lambda_shows_a_computed_frame_and_releasing_computes_it(page, rooms):
    page.get_by_role("tab", name="Interpolate").click()
    _upload(page, "interp-a", rooms[0])
    _upload(page, "interp-b", rooms[1])
    page.click("#interp-button")
    status = page.locator("#interp-status")
    status.get_by_text("8 frame(s)").wait_for(timeout=60_000)  # λ = 0, 1/7, ..., 1
    _loaded_images(page, "#interp-frames img", 8)
    computed = status.inner_text()
    # Dragging (input events, no release yet) shows the computed frame nearest λ = 0.45: λ = 3/7.
    slider = page.locator("#interp-weight input[type=range]")
    slider.fill("0.45")
    note = page.locator("#interp-weight-note")
    note.get_by_text("nearest precomputed frame λ = 0.43; release to compute λ = 0.45 exactly").wait_for(
        timeout=30_000)
    frame = page.locator("#interp-frames img").nth(3).get_attribute("src")
    page.wait_for_function("src => document.querySelector('#interp-middle img')?.src === src", arg=frame,
                           timeout=30_000)  # the very file (enlarged copy) the frames gallery shows
    # No model ran: every model call rewrites the status (a single λ's says "1 frame(s) at λ").
    assert status.inner_text() == computed
    # Releasing computes λ = 0.45 itself.
    slider.dispatch_event("pointerup")
    status.get_by_text("1 frame(s) at λ = 0.45").wait_for(timeout=60_000)
    note.get_by_text("λ = 0.45, computed exactly").wait_for(timeout=30_000)
    _loaded_images(page, "#interp-middle img", 1)
    assert page.locator("#interp-middle img").get_attribute("src") != frame
    # Another image B: the frames belong to the old one, so dragging no longer flips through them.
    _upload(page, "interp-b", rooms[0])
    note.get_by_text("the inputs changed: Interpolate again").wait_for(timeout=30_000)
    shown = page.locator("#interp-middle img").get_attribute("src")
    slider.fill("0.15")
    note.get_by_text("Interpolate first to flip through its frames; release computes λ = 0.15").wait_for(
        timeout=30_000)
    assert page.locator("#interp-middle img").get_attribute("src") == shown


@pytest.fixture(scope="module")
def slow_model(app_server):
    """A 64 px model whose 200 steps take seconds on a CPU: its eight previews are each on screen ~0.4 s."""
    from conftest import make_tiny_checkpoint

    return make_tiny_checkpoint(app_server.log.parent / "checkpoints" / "slow-64px", resolution=64,
                                **{"diffusion.num_train_timesteps": 1000})


def test_generate_shows_x0_previews_while_sampling(page, slow_model):
    page.get_by_role("tab", name="Generate").click()
    page.click("#generate-refresh")
    _option(page, "generate-model", slow_model.name).click()
    # Choosing a model sets the steps to its default: wait for that before choosing them.
    page.locator("#generate-model-info").get_by_text(slow_model.name).wait_for(timeout=30_000)
    steps = page.locator("#generate-steps input[type=number]")
    steps.fill("200")
    steps.press("Enter")
    page.click("#generate-button")
    # A preview is a gallery image shown while the status still says the samples are forming.
    status = page.locator("#generate-status")
    status.get_by_text("predicted clean images x̂₀").wait_for(timeout=60_000)
    _loaded_images(page, "#generate-gallery img", 1)
    status.get_by_text("200 steps").wait_for(timeout=120_000)
    _loaded_images(page, "#generate-gallery img", 1)
    steps.fill("20")
    steps.press("Enter")


def test_choosing_a_consistency_model_proposes_its_few_steps_and_the_machine_is_explained(page, app_server):
    import torch
    from test_checkpoint import write_consistency_layout

    write_consistency_layout(app_server.log.parent / "checkpoints" / "few-step")
    page.get_by_role("tab", name="Generate").click()
    page.click("#generate-refresh")
    steps = page.locator("#generate-steps input[type=number]")
    _option(page, "generate-model", "few-step").click()
    page.wait_for_function("() => document.querySelector('#generate-steps input[type=number]').value === '2'",
                           timeout=30_000)
    _option(page, "generate-model", "tiny  (local)").click()
    page.wait_for_function("() => document.querySelector('#generate-steps input[type=number]').value === '20'",
                           timeout=30_000)
    assert steps.input_value() == "20"
    if not torch.cuda.is_available():
        assert "No GPU here" in page.locator("#generate-machine-note").inner_text()


def test_neighbours_tab_query_shows_k_neighbours(page, app_server, tmp_path):
    page.get_by_role("tab", name="Nearest neighbours").click()
    _upload(page, "nn-query", app_server.log.parent / "rooms" / "room-00003.png")
    page.click("#nn-button")
    page.get_by_text("Nearest of 24 indexed images").first.wait_for(timeout=60_000)
    _loaded_images(page, "#nn-gallery img", 6)  # the query and k = 5 neighbours
    assert "(non-standard LPIPS weights: not comparable)" in page.locator("#nn-status").inner_text()
    page.screenshot(path=str(tmp_path / "neighbours.png"))


def test_find_neighbours_under_the_generate_gallery(page):
    page.get_by_role("tab", name="Nearest neighbours").click()
    before = page.locator("#nn-query img").first.get_attribute("src")
    page.get_by_role("tab", name="Generate").click()
    page.click("#generate-button")
    page.locator("#generate-gallery img").first.wait_for(state="visible", timeout=60_000)
    page.click("#generate-find-neighbours")
    # The Neighbours tab opens with the generated sample as its query, and searches.
    page.wait_for_function(
        "old => { const i = document.querySelector('#nn-query img'); return i && i.src !== old; }",
        arg=before, timeout=60_000,
    )
    page.locator("#nn-status").get_by_text("Nearest of 24 indexed images").wait_for(timeout=60_000)
    _loaded_images(page, "#nn-gallery img", 6)


def test_train_tab_fine_tune_mode_switches_fields_and_explains_errors(page):
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Fine-tune a model").check()
    page.locator("#finetune-start").wait_for(state="visible", timeout=30_000)
    page.get_by_label("Instance images (a folder under the data roots)").wait_for(state="visible")
    assert not page.locator("#train-start").is_visible()
    assert not page.get_by_label("Data source").is_visible()
    page.click("#finetune-start")  # no model chosen yet
    page.get_by_text("give the model to fine-tune").first.wait_for(timeout=30_000)
    page.get_by_label("Train from a preset").check()
    page.locator("#train-start").wait_for(state="visible", timeout=30_000)


def _all_loaded_at_least(page, selector, width):
    page.wait_for_function(
        """([selector, width]) => { const images = [...document.querySelectorAll(selector)];
            return images.length > 0 && images.every(i => i.complete && i.naturalWidth >= width); }""",
        arg=[selector, width], timeout=60_000,
    )


def _natural_widths(page, selector):
    return page.locator(selector).evaluate_all("images => images.map(i => i.naturalWidth)")


def _option(page, dropdown_id, text):
    """The option of a dropdown whose label contains ``text`` (the list filtered by typing it)."""
    page.locator(f"#{dropdown_id} input").fill(text)
    return page.locator(f"#{dropdown_id} [data-testid=dropdown-option]", has_text=text)


@pytest.fixture(scope="module")
def later_model(page, app_server):
    """A 32 px model that appears in the checkpoints folder after the page has loaded."""
    from conftest import make_tiny_checkpoint

    return make_tiny_checkpoint(app_server.log.parent / "checkpoints" / "trained-later", seed=6, resolution=32)


def test_a_model_trained_while_the_app_runs_is_listed_after_refresh_and_reload(page, later_model):
    page.get_by_role("tab", name="Generate").click()
    page.click("#generate-refresh")
    _option(page, "generate-model", later_model.name).wait_for(timeout=30_000)
    page.get_by_role("tab", name="Interpolate").click()
    page.click("#interp-refresh")
    _option(page, "interp-model", later_model.name).wait_for(timeout=30_000)
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector("#generate-button", timeout=60_000)
    _option(page, "generate-model", later_model.name).wait_for(timeout=30_000)
    page.get_by_role("tab", name="Interpolate").click()
    _option(page, "interp-model", later_model.name).wait_for(timeout=30_000)


def test_a_32_px_sample_is_shown_large_and_downloaded_at_32_px(page, later_model):
    page.get_by_role("tab", name="Generate").click()
    _option(page, "generate-model", later_model.name).click()
    page.click("#generate-button")
    page.wait_for_function("name => document.querySelector('#generate-status').innerText.includes(name)",
                           arg=f"from {later_model}", timeout=60_000)
    # Every image the gallery shows, once loaded, is the enlarged copy (the final yield replaces the previews).
    _all_loaded_at_least(page, "#generate-gallery img", 256)
    page.get_by_text("Samples at the model's own size (downloads)").click()
    _loaded_images(page, "#generate-native img", 1)
    assert set(_natural_widths(page, "#generate-native img")) == {32}


def test_an_error_stays_in_the_status_area_after_its_pop_up_has_gone(page, app_server):
    page.get_by_role("tab", name="Nearest neighbours").click()
    _upload(page, "nn-query", app_server.log.parent / "rooms" / "room-00002.png")
    index = page.locator("#nn-index input")
    index.fill(str(app_server.log.parent / "indexes" / "not-built"))
    index.press("Enter")
    page.click("#nn-button")
    toast = page.locator("[data-testid=toast-body]")
    toast.first.wait_for(timeout=30_000)
    assert "build one with bedgen index" in toast.first.inner_text()  # no Markdown backticks in the pop-up
    status = page.locator("#nn-status")
    status.get_by_text("no LPIPS index at").wait_for(timeout=30_000)
    toast.first.wait_for(state="detached", timeout=30_000)  # Gradio closes its pop-up after 10 s
    page.wait_for_timeout(5_000)
    assert "no LPIPS index at" in status.inner_text() and "build one with" in status.inner_text()
    assert page.locator("#nn-gallery").get_by_text("Error", exact=True).count() == 0  # no bare badge
    page.reload(wait_until="domcontentloaded")  # the next tests start from the listed index again
    page.wait_for_selector("#generate-button", timeout=60_000)


def test_train_status_polling_shows_no_progress_text(page):
    page.get_by_role("tab", name="Train").click()
    page.evaluate("""() => { const status = document.querySelector('#train-status'); window.trainTexts = [];
        new MutationObserver(() => window.trainTexts.push(status.innerText))
            .observe(status, {subtree: true, childList: true, characterData: true, attributes: true}); }""")
    for _ in range(4):  # the timer polls the status every 2 s, each poll a request to the queue
        with page.expect_request(lambda r: "queue/join" in r.url, timeout=30_000):
            pass
    texts = page.evaluate("window.trainTexts")
    assert not [t for t in texts if "processing" in t or "queue:" in t], texts[:5]


def test_train_loss_plot_has_numeric_axes_and_falls_with_the_loss(page, app_server):
    import json
    import time

    (app_server.log.parent / "data" / "no-images").mkdir(parents=True, exist_ok=True)
    name = f"plot-{time.time_ns()}"
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-loss [aria-roledescription=axis]").first.wait_for(timeout=30_000)  # the empty plot
    page.get_by_label("Train from a preset").check()
    page.get_by_label("Run name (folder under the checkpoints folder)").fill(name)
    page.get_by_label("Data source").fill("data/no-images")
    page.click("#train-start")
    page.locator("#train-status").get_by_text(name).wait_for(timeout=30_000)
    # The curve the trainer would write (this run has no images, so it writes none itself).
    losses = [(10, 1.08), (20, 0.52), (30, 0.21), (40, 0.04)]
    run = app_server.log.parent / "checkpoints" / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": v, "max_steps": 40}) + "\n"
                                               for s, v in losses))
    line = page.locator("#train-loss path[aria-roledescription='line mark']")
    page.wait_for_function("""() => { const l = document.querySelector("#train-loss path[aria-roledescription='line mark']");
        return l && (l.getAttribute('d').match(/L/g) || []).length === 3; }""", timeout=30_000)
    axes = page.locator("#train-loss [aria-roledescription=axis]").evaluate_all(
        "axes => axes.map(a => a.getAttribute('aria-label'))")
    assert any(a.startswith("X-axis titled 'step' for a linear scale") for a in axes), axes
    assert any(a.startswith("Y-axis titled 'loss' for a linear scale") for a in axes), axes
    points = [tuple(map(float, p.split(","))) for p in line.get_attribute("d")[1:].split("L")]
    xs, ys = zip(*points)
    assert list(xs) == sorted(xs) and len(set(xs)) == 4  # steps left to right
    assert list(ys) == sorted(ys) and len(set(ys)) == 4  # a falling loss is drawn falling (SVG y grows downwards)
