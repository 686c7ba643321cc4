"""The Nearest neighbours tab: a query image -> its k closest training images under LPIPS."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..data.datasets import preprocess
from ..core.errors import BedgenError
from ..core.images import load_image
from ..evaluation.neighbours import LpipsIndex, SearchResult, find_indexes, load_neighbour_image
from .components import ImageUpload, RawSlider, gallery_image
from .generate import _whole
from .interpolate import _errors_to_ui
from .settings import AppSettings

MAX_K = 20
TABLE_HEADERS = ["rank", "key", "LPIPS"]


@dataclass
class NeighboursOutput:
    gallery: list[tuple[Image.Image, str]]
    table: list[list[Any]]
    status: str


class IndexCache:
    """Opened indexes by folder (each keeps its LPIPS network), shared by requests."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self._open: dict[Path, LpipsIndex] = {}
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        root = self.settings.indexes
        found = find_indexes(root) if root.is_dir() else []
        return [(str(p.relative_to(root)) if p.is_relative_to(root) else str(p), str(p)) for p in found]

    def get(self, folder: str) -> LpipsIndex:
        if not isinstance(folder, str) or not folder.strip():
            raise BedgenError(
                f"choose an index; build one with `bedgen index --data SRC --out {self.settings.indexes}/NAME`"
            )
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
    k = _whole("k", k, 1, MAX_K)
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
    if result.memorised:
        return "⚠️ **Possible memorised copy.** " + base
    return base + " Not a near-copy."


def build_neighbours_tab(settings: AppSettings, generated: gr.Gallery, selected: gr.State) -> dict[str, Any]:
    indexes = IndexCache(settings)
    choices = indexes.choices()
    with gr.Row():
        with gr.Column(scale=1):
            query = ImageUpload(type="filepath", label="Query image", elem_id="nn-query", height=256)
            use_last = gr.Button("Use last generated image", size="sm")
            index = gr.Dropdown(
                choices, value=choices[0][1] if choices else None, label="Index", allow_custom_value=True,
                info=f"LPIPS indexes under {settings.indexes} (bedgen index --data SRC --out {settings.indexes}/NAME)",
                elem_id="nn-index",
            )
            refresh = gr.Button("↻ Refresh indexes", size="sm")
            k = RawSlider(1, MAX_K, value=5, step=1, label="k (neighbours)")
            button = gr.Button("Find neighbours", variant="primary", elem_id="nn-button")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="nn-status")
            gallery = gr.Gallery(label="Query and its nearest training images", columns=6, format="png",
                                 elem_id="nn-gallery")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Distances", interactive=False)

    def on_search(index_folder, image, k_value):
        out = run_neighbours(indexes, index_folder, image, k_value)
        return out.gallery, out.table, out.status

    search = _errors_to_ui(on_search, "neighbour search")
    button.click(search, [index, query, k], [gallery, table, status], api_name="neighbours",
                 concurrency_limit=settings.concurrency, concurrency_id="gpu")
    use_last.click(gallery_image, [generated, selected], query, api_name="use_generated_query", queue=False)
    refresh.click(lambda: gr.Dropdown(choices=indexes.choices()), None, index, api_name="refresh_indexes", queue=False)
    return {"query": query, "index": index, "k": k, "search": search, "outputs": [gallery, table, status]}
