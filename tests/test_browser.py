"""The app in a real headless Chromium (Debian's package), driven by Playwright."""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
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
