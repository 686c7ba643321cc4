"""What dragging and releasing the Interpolate tab's λ slider costs, in a real browser.

    python bench/slider_drag.py [--resolution 64] [--drags 40] [--releases 3]

Starts the app (`python app.py`) on a model with random weights in the ddpm-small layout at
--resolution px, opens it in headless Chromium (Debian's package, driven by Playwright), uploads two
procedurally drawn rooms and runs Interpolate at the tab's defaults (8 frames, t = 0.5, 25 DDIM
steps). Then:

- drag: the slider is moved with Playwright's fill (the input events a drag makes); timed in the page
  (performance.now(), from just before the move) until the middle image shows the nearest precomputed
  frame, loaded and decoded; the round trip to the browser's driver is included.
  Values alternate so that every drag shows another frame. Dragging must make no model call: the
  status line, which every model call rewrites, is checked unchanged after all drags.
- release (the baseline): a ``pointerup`` at a new λ, timed until the note says the frame was
  computed exactly and the new image is loaded: one model call through the tab's fastest path.

Prints the median, 95th percentile and worst drag, the median release, and their ratio, next to
the CPU's flags and the load average. The drag path runs no network, so its time does not depend on
the model's size; the release's does (bench/cpu_defaults.py times it at 256 px).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bedgen.config.overrides import override  # noqa: E402
from bedgen.config.schema import preset  # noqa: E402
from bedgen.core.device import cpu_flags, cpu_kind  # noqa: E402
from bedgen.models.unet import build_training_scheduler, build_unet  # noqa: E402
from bedgen.storage.checkpoint import save_checkpoint  # noqa: E402
from synthetic import write_rooms  # noqa: E402

TARGET_DRAG_S = 0.2
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# In the page: remember the middle image's source and the time, before Playwright moves the slider.
MARK_JS = """() => {
  window.__before = document.querySelector('#interp-middle img')?.src;
  window.__start = performance.now();
}"""
# In the page: resolve with the milliseconds since the mark when the middle image has another source,
# fully loaded and decoded, and the note under the slider says ``noteText``.
WAIT_JS = """async (noteText) => {
  const image = () => document.querySelector('#interp-middle img');
  const note = () => document.querySelector('#interp-weight-note')?.innerText ?? '';
  return await new Promise((resolve, reject) => {
    const check = () => {
      const img = image();
      if (img && img.src !== window.__before && img.complete && img.naturalWidth > 0 && note().includes(noteText)) {
        resolve(performance.now() - window.__start);
      } else if (performance.now() - window.__start > 600000) {
        reject(new Error('no new frame after 600 s'));
      } else {
        setTimeout(check, 1);
      }
    };
    check();
  });
}"""


def describe_machine() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx")))
    model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                           text=True).stdout.strip()
    return (f"cpu: {model}, {os.cpu_count()} cores, kind {cpu_kind()}\n"
            f"flags (lscpu): {' '.join(flags) or 'none of avx2/avx512*/amx*'}")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_model(folder: Path, resolution: int) -> Path:
    config = override(preset("ddpm-small"), {"resolution": resolution})
    return save_checkpoint(folder, build_unet(config), build_training_scheduler(config), config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workdir: Path, model: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "BEDGEN_CHECKPOINTS": str(model.parent), "BEDGEN_DEFAULT_MODEL": str(model),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "BEDGEN_COMPILED_CACHE": str(workdir / "compiled")}  # the random model's export goes with the run
    app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=workdir, env=env,
                           stdout=open(workdir / "app.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise SystemExit(f"the app exited:\n{(workdir / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return app, url
        except OSError:
            time.sleep(0.5)
    app.kill()
    raise SystemExit("the app did not answer within 300 s")


def interpolate_once(page, rooms: list[Path]) -> str:
    page.get_by_role("tab", name="Interpolate").click()
    for elem_id, room in zip(("interp-a", "interp-b"), rooms):
        page.locator(f"#{elem_id} input[type=file]").set_input_files(str(room))
        page.locator(f"#{elem_id} img").first.wait_for(state="visible", timeout=60_000)
    started = time.perf_counter()
    page.click("#interp-button")
    page.locator("#interp-status").get_by_text("frame(s)").wait_for(timeout=1_800_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#interp-frames img')].filter(i => i.complete && i.naturalWidth > 0)"
        ".length >= 8", timeout=120_000)
    print(f"Interpolate (8 frames): {time.perf_counter() - started:.1f} s", flush=True)
    return page.locator("#interp-status").inner_text()


def drag_values(count: int) -> list[float]:
    """λ values whose nearest of the 8 frames (0, 1/7, ..., 1) differs from the previous one's."""
    frames = [i / 7 for i in range(8)]
    order = [1, 4, 2, 6, 3, 0, 5, 7]
    return [round(frames[order[i % len(order)]] + 0.02 * (-1) ** i, 2) for i in range(count)]


def move(page, value: float, release: bool) -> float:
    """Milliseconds from moving λ to ``value`` (Playwright's fill: the input events a drag makes) or
    releasing it there (pointerup) until the middle image shows the new frame."""
    slider = page.locator("#interp-weight input[type=range]")
    page.evaluate(MARK_JS)
    if release:
        slider.dispatch_event("pointerup")
        return page.evaluate(WAIT_JS, "computed exactly")
    slider.fill(str(value))
    return page.evaluate(WAIT_JS, "precomputed frame")  # "nearest …", or the very frame at λ = 0 and 1


def measure(page, drags: int, releases: int) -> tuple[list[float], list[float]]:
    drag_ms = [move(page, v, release=False) for v in drag_values(drags)]
    release_ms = []
    for v in drag_values(drags + releases)[drags:]:
        move(page, v, release=False)
        release_ms.append(move(page, v, release=True))
    return drag_ms, release_ms


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(drag_ms: list[float], release_ms: list[float], unchanged: bool) -> None:
    drag = statistics.median(drag_ms) / 1000
    release = statistics.median(release_ms) / 1000
    print(f"\nload average at end: {load_average()}")
    print(f"drag ({len(drag_ms)} moves): median {drag * 1000:.0f} ms, 95th percentile "
          f"{percentile(drag_ms, 0.95):.0f} ms, worst {max(drag_ms):.0f} ms; no model call while dragging: "
          f"{'yes' if unchanged else 'NO (the status changed)'}")
    print(f"release ({len(release_ms)} times, one model call each): median {release:.2f} s")
    print(f"release / drag: {release / drag:.0f}x")
    verdict = "met" if percentile(drag_ms, 0.95) / 1000 <= TARGET_DRAG_S else "NOT met"
    print(f"target: a dragged frame shown in <= {TARGET_DRAG_S} s (95th percentile): {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--drags", type=int, default=40)
    parser.add_argument("--releases", type=int, default=3)
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed (tests/run.sh installs it from Debian)")
    from playwright.sync_api import sync_playwright

    print(describe_machine())
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_model(work / "checkpoints" / "ddpm-small-random", args.resolution)
        rooms = write_rooms(work / "rooms", 2, size=args.resolution, seed=5)
        print(f"model: ddpm-small layout, {args.resolution} px, random weights")
        app, url = start_app(work, model)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_selector("#generate-button", timeout=120_000)
                status = interpolate_once(page, rooms)
                drag_ms, release_ms = measure(page, args.drags, 0)
                unchanged = page.locator("#interp-status").inner_text() == status
                _, release_ms = measure(page, 0, args.releases)
                browser.close()
        finally:
            app.terminate()
            app.wait(timeout=30)
    report(drag_ms, release_ms, unchanged)


if __name__ == "__main__":
    main()
