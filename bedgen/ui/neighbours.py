"""The Nearest neighbours tab: a query image -> its k closest training images under LPIPS."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..core.checks import whole_number
from ..core.errors import BedgenError
from ..core.images import load_image
from ..data.datasets import preprocess
from ..evaluation.neighbours import NON_STANDARD_NOTE, LpipsIndex, SearchResult, find_indexes, load_neighbour_image
from .components import Choice, ImageUpload, RawSlider, gallery_image
from .display import display_gallery, enlarged_items
from .errors import listen
from .settings import AppSettings

MAX_K = 20
TABLE_HEADERS = ["rank", "key", "LPIPS"]


@dataclass
class NeighboursOutput:
    gallery: list[tuple[Image.Image, str]]
    table: list[list[Any]]
    status: str


def index_choices(root: Path) -> list[tuple[str, str]]:
    """(name relative to ``root``, folder) of the complete indexes under ``root``, now."""
    found = find_indexes(root) if root.is_dir() else []
    return [(str(p.relative_to(root)) if p.is_relative_to(root) else str(p), str(p)) for p in found]


class IndexCache:
    """Opened indexes by folder (each keeps its LPIPS network), shared by requests."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self._open: dict[Path, LpipsIndex] = {}
        self._lock = threading.Lock()

    def get(self, folder: str) -> LpipsIndex:
        if not isinstance(folder, str) or not folder.strip():
            if index_choices(self.settings.indexes):
                raise BedgenError("choose an index in the Index list of the Nearest neighbours tab "
                                  "(↻ Refresh indexes lists new ones)")
            raise BedgenError(f"no index yet; build one with `bedgen index --data SRC --out {self.settings.indexes}/NAME`")
        path = Path(folder).expanduser().resolve()
        root = self.settings.indexes.expanduser().resolve()
        if not path.is_relative_to(root):  # the app only reads indexes under its folder
            raise BedgenError(f"index '{folder}' is not under the app's index folder {self.settings.indexes}")
        with self._lock:
            if path not in self._open:
                self._open[path] = LpipsIndex.open(path)
            return self._open[path]


def run_neighbours(indexes: IndexCache, index_folder: str, query: Any, k: Any) -> NeighboursOutput:
    """Typed core of the Search button; raises BedgenError on bad input."""
    k = whole_number("k", k, 1, MAX_K)
    if query is None:
        raise BedgenError("upload a query image, or use the last generated image")
    index = indexes.get(index_folder)
    image = load_image(query, "query image")
    result = index.search([image], k=k)[0]
    seen = preprocess(image, index.resolution, index.square)  # the query as the index sees it
    shown = [(Image.fromarray(seen.transpose(1, 2, 0)), "query")]
    for n in result.neighbours:
        shown.append((load_neighbour_image(index, n), f"#{n.rank} · LPIPS {n.lpips:.4f}"))
    table = [[n.rank, n.key, round(n.lpips, 6)] for n in result.neighbours]
    return NeighboursOutput(shown, table, _verdict(result, len(index)))


def _verdict(result: SearchResult, count: int) -> str:
    base = f"Nearest of {count} indexed images: LPIPS **{result.nearest:.4f}**"
    if result.typical_nn is None or result.typical_nn != result.typical_nn:  # None or nan
        return base + " (the index is too small to know a typical distance)."
    base += f"; training images are typically {result.typical_nn:.4f} from their nearest neighbour."
    if not result.standard_weights:
        return f"{base} {NON_STANDARD_NOTE}"
    if result.memorised:
        return "⚠️ **Possible memorised copy.** " + base
    return base + " Not a near-copy."


def build_neighbours_tab(settings: AppSettings, demo: gr.Blocks, generated: gr.Gallery,
                         selected: gr.State) -> dict[str, Any]:
    indexes = IndexCache(settings)
    choices = index_choices(settings.indexes)
    with gr.Row():
        with gr.Column(scale=1):
            query = ImageUpload(type="filepath", label="Query image", elem_id="nn-query", height=256)
            use_last = gr.Button("Use last generated image", size="sm")
            index = Choice(
                choices, value=choices[0][1] if choices else None, label="Index", allow_custom_value=True,
                info=f"LPIPS indexes under {settings.indexes} (bedgen index --data SRC --out {settings.indexes}/NAME)",
                elem_id="nn-index",
            )
            refresh = gr.Button("↻ Refresh indexes", size="sm", elem_id="nn-refresh")
            k = RawSlider(1, MAX_K, value=5, step=1, label="k (neighbours)")
            button = gr.Button("Find neighbours", variant="primary", elem_id="nn-button")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="nn-status")
            shown = display_gallery(label="Query and its nearest training images", columns=6, elem_id="nn-gallery")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Distances", interactive=False)
            with gr.Accordion("Images at the index's size (downloads)", open=False):
                gallery = gr.Gallery(label="Query and its nearest training images", columns=6, format="png",
                                     interactive=False)

    def search(index_folder, image, k_value):
        out = run_neighbours(indexes, index_folder, image, k_value)
        return out.gallery, out.table, out.status, enlarged_items(out.gallery)

    outputs = [gallery, table, status, shown]
    listen(button.click, search, [index, query, k], outputs, what="neighbour search", status=status,
           api_name="neighbours", concurrency_limit=settings.concurrency, concurrency_id="gpu")
    listen(use_last.click, gallery_image, [generated, selected], query, what="taking the generated image",
           status=status, api_name="use_generated_query", queue=False)
    refresh.click(lambda: gr.Dropdown(choices=index_choices(settings.indexes)), None, index,
                  api_name="refresh_indexes", queue=False)

    def on_page_load():  # indexes built while the app runs are listed, the first one chosen
        found = index_choices(settings.indexes)
        return gr.Dropdown(choices=found, value=found[0][1] if found else None)

    demo.load(on_page_load, None, index, queue=False, show_progress="hidden", api_visibility="private")
    return {"query": query, "index": index, "k": k, "search": search, "outputs": outputs, "status": status}
