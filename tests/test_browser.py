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


def test_click_generate_shows_images(page, tmp_path):
    page.click("#generate-button")
    images = page.locator("#generate-gallery img")
    images.first.wait_for(state="visible", timeout=60_000)
    assert images.count() >= 1
    page.wait_for_function(
        "() => [...document.querySelectorAll('#generate-gallery img')].some(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    status = page.locator("#generate-status").inner_text()
    assert "image(s) from" in status
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
    # Moving λ recomputes the middle image; the status then reports a single frame.
    slider = page.locator("#interp-weight input[type=range]")
    slider.fill("0.8")
    slider.dispatch_event("change")
    slider.dispatch_event("pointerup")
    page.get_by_text("1 frame(s)").first.wait_for(timeout=60_000)
    _loaded_images(page, "#interp-middle img", 1)
    page.screenshot(path=str(tmp_path / "interpolate.png"))


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
