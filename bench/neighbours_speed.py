"""Nearest-neighbour speed: bedgen's exact LPIPS index vs calling lpips.LPIPS on every pair.

    python bench/neighbours_speed.py [--sizes 10000,100000] [--queries 5] [--pairs 200] [--work DIR]

LPIPS AlexNet at 64 px with random backbone weights saved to a file (speed does not
depend on the values). Query: top 5 of one image.

* naive: ``lpips.LPIPS(query, image)`` for every indexed image, batch 1, as a user would
  loop (images already decoded and preprocessed, which favours the naive loop); timed
  on --pairs pairs and extrapolated to N.
* index: ``LpipsIndex.search`` (embeds the query, PCA-prefiltered branch and bound over
  the mmap'd fp16 shards, exact re-rank), and the same with ``exhaustive=True``.

The N-image indexes are filled with SYNTHETIC embeddings written through the index's own
shard writer (generating, decoding and embedding 100k procedural rooms would add minutes
of this 2-core VM and be no closer to LSUN): each is a random mix of two real room
embeddings plus Gaussian noise sized so that nearest-neighbour distances match the real
rooms' (the PCA sees structure, and the noise is what it cannot see). Synthetic keys have
no source images, so those searches run with ``rerank=False`` and the exact re-rank is
added as measured on a real index: candidates × seconds to read, decode and embed one
image. Embedding throughput and exactness are measured on real images.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bedgen.evaluation import neighbours as nn  # noqa: E402
from bedgen.data.datasets import preprocess  # noqa: E402
from bedgen.evaluation.neighbours import LpipsIndex, build_index  # noqa: E402
from bedgen.models.lpips import shared_embedder  # noqa: E402
from synthetic import write_rooms  # noqa: E402

RESOLUTION = 64
K = 5
REAL_ROOMS = 2048  # a real index: build throughput, exactness, re-rank cost, bases of the synthetic ones


def save_random_alexnet(path: Path) -> Path:
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.alexnet().features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def reference_lpips(weights: Path):
    import lpips

    state = torch.load(weights, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    with torch.no_grad():
        for name, parameter in ref.net.named_parameters():
            _, i, kind = name.split(".")
            parameter.copy_(state[f"features.{i}.{kind}"])
    return ref.eval()


def as_input(path: Path) -> torch.Tensor:
    return torch.from_numpy(preprocess(Image.open(path), RESOLUTION, "crop")).float()[None] / 127.5 - 1


def naive_seconds_per_pair(ref, query: Path, images: list[Path], pairs: int) -> float:
    q = as_input(query)
    inputs = [as_input(p) for p in images[:pairs]]
    with torch.no_grad():
        for x in inputs[:5]:
            ref(q, x)  # warm-up
        start = time.perf_counter()
        for i in range(pairs):
            ref(q, inputs[i % len(inputs)])
        return (time.perf_counter() - start) / pairs


def embedding_throughput(embedder, images: list[Path]) -> float:
    batch = torch.from_numpy(np.stack([preprocess(Image.open(p), RESOLUTION, "crop") for p in images[:64]]))
    embedder.embed(batch)
    start = time.perf_counter()
    for _ in range(3):
        embedder.embed(batch)
    return 3 * len(batch) / (time.perf_counter() - start)


def best_of(repeats: int, fn):
    fn()  # warm-up: page cache, allocator
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def rerank_seconds_per_candidate(index: LpipsIndex, queries: list[Path]) -> float:
    """(search with re-rank − search without) / candidates, on an index of real images."""
    per = []
    for q in queries:
        plain, _ = best_of(3, lambda: index.search([q], k=K, rerank=False))
        exact, result = best_of(3, lambda: index.search([q], k=K))
        per.append((exact - plain) / result[0].candidates)
    return float(np.median(per))


def write_synthetic_index(out: Path, real: LpipsIndex, count: int, rng: np.random.Generator) -> LpipsIndex:
    """``count`` synthetic embeddings through the index's own shard writer (see the module docstring)."""
    base = torch.from_numpy(real._gather(np.arange(len(real))).astype(np.float32))
    noise_scale = (real.typical_nn["median"] / (2 * real.dim)) ** 0.5  # ||n1 − n2||² ≈ typical NN distance

    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))

    def synthetic(n: int) -> torch.Tensor:
        a, b = rng.integers(0, len(base), n), rng.integers(0, len(base), n)
        t = torch.from_numpy(rng.uniform(0, 1, (n, 1)).astype(np.float32))
        mix = torch.randn(n, real.dim, generator=generator).mul_(noise_scale)
        return mix.add_(base[a].mul_(1 - t)).add_(base[b].mul_(t))

    manifest = {key: value for key, value in real.manifest.items() if key in nn.BUILD_SETTINGS or key in (
        "format", "layers", "lpips_weights")}
    rows = real.manifest["rows_per_shard"]
    manifest.update(kind="synthetic", source=f"synthetic:{count}", source_images=count, rows_per_shard=rows,
                    num_shards=-(-count // rows))
    manifest = nn._start_manifest(out, manifest, Path(real.lpips_weights))
    projection = nn._Projection.fit(synthetic(nn.PCA_FIT_IMAGES))
    projection.save(out / nn.PROJECTION_FILE)
    for number in range(manifest["num_shards"]):
        positions = range(number * rows, min(count, (number + 1) * rows))
        buffer = nn._ShardBuffer(len(positions), real.dim, projection)
        for start in range(positions.start, positions.stop, 1024):
            stop = min(positions.stop, start + 1024)
            keys = [f"synthetic-{i:07d}" for i in range(start, stop)]
            buffer.add(synthetic(stop - start), keys, list(range(start, stop)))
        manifest["shards"].append(buffer.save(out, number))
        nn._commit(out, manifest)
        print(f"\r  wrote {min(count, (number + 1) * rows)}/{count} synthetic embeddings", end="", flush=True)
    manifest["typical_nn"] = nn._typical_nn(LpipsIndex(out, manifest))
    manifest["complete"] = True
    nn._commit(out, manifest)
    print()
    return LpipsIndex.open(out)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="index sizes N, comma-separated")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=200, help="naive pairs timed, then extrapolated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bedgen-nn-bench-", dir=args.work))
    try:
        return run(args, sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, sizes: list[int], work: Path) -> int:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    weights = save_random_alexnet(work / "alexnet-random.pth")
    rooms = write_rooms(work / "rooms", REAL_ROOMS, size=96, seed=1)
    queries = write_rooms(work / "queries", args.queries, size=96, seed=2)
    embedder = shared_embedder("alex", weights, "cpu")
    dim = embedder.dim(RESOLUTION)
    print(f"LPIPS alex at {RESOLUTION} px: D = {dim} dims = {2 * dim} bytes per image in fp16; "
          f"PCA prefilter R = {nn.PCA_DIM}")

    start = time.perf_counter()
    real = LpipsIndex.open(build_index(str(work / "rooms"), work / "real-index", RESOLUTION, lpips_weights=weights,
                                       device="cpu"))
    build_rate = len(real) / (time.perf_counter() - start)
    embed_rate = embedding_throughput(embedder, rooms)
    print(f"embedding throughput (real 64 px rooms, batch 64): {embed_rate:.0f} img/s; whole build_index of "
          f"{len(real)} PNGs incl. decoding, PCA fit and typical-NN: {build_rate:.0f} img/s "
          f"(embedding 100k images: ~{1e5 / embed_rate:.0f} s)")

    ref = reference_lpips(weights)
    per_pair = naive_seconds_per_pair(ref, queries[0], rooms, args.pairs)
    per_candidate = rerank_seconds_per_candidate(real, queries[:3])
    print(f"naive lpips.LPIPS, batch 1: {per_pair * 1e3:.2f} ms/pair (timed on {args.pairs} pairs); "
          f"exact re-rank: {per_candidate * 1e3:.2f} ms per candidate (read + decode + embed)")

    check_real_exactness(real, ref, queries[0], rooms)

    rng = np.random.default_rng(0)
    rows, passed = [], True
    for count in sizes:
        free = shutil.disk_usage(work).free
        need = count * (2 * dim + 4 * nn.PCA_DIM + 64) * 1.1
        if need > free:
            print(f"N = {count}: needs {need / 1e9:.1f} GB, only {free / 1e9:.1f} GB free; skipped")
            continue
        start = time.perf_counter()
        index = write_synthetic_index(work / f"synthetic-{count}", real, count, rng)
        print(f"  N = {count}: written in {time.perf_counter() - start:.0f} s; "
              f"typical NN LPIPS {index.typical_nn['median']:.4f} (real rooms: {real.typical_nn['median']:.4f})")
        row = measure(index, queries, per_pair, per_candidate, args.repeats)
        rows.append(row)
        if count == 10_000:
            passed = row["speedup_prefiltered"] >= 100
        shutil.rmtree(work / f"synthetic-{count}")
    report(rows)
    if any(r["count"] == 10_000 for r in rows):
        print(f"exact top-{K} over 10k >= 100x faster than naive: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


def check_real_exactness(real: LpipsIndex, ref, query: Path, rooms: list[Path]) -> None:
    q = as_input(query)
    with torch.no_grad():
        expected = np.array([float(ref(q, as_input(p))) for p in rooms])
    result = real.search([query], k=K)[0]
    order = np.argsort(expected)[:K]
    same = [n.key for n in result.neighbours] == [rooms[i].name for i in order]
    error = max(abs(n.lpips - expected[int(n.key[5:10])]) for n in result.neighbours)
    stored = real.search([query], k=len(real), rerank=False)[0]
    fp16 = max(abs(n.lpips - expected[int(n.key[5:10])]) for n in stored.neighbours)
    print(f"real index of {len(real)}: top-{K} equals lpips.LPIPS brute force: {same}; max |error| after re-rank "
          f"{error:.1e}; fp16-stored distances (no re-rank), all {len(real)}: max |error| {fp16:.1e}")


def measure(index: LpipsIndex, queries: list[Path], per_pair: float, per_candidate: float, repeats: int) -> dict:
    timings = {"prefiltered": [], "exhaustive": []}
    evaluated, candidates, agree = [], [], True
    for q in queries:
        t_pre, pre = best_of(repeats, lambda: index.search([q], k=K, rerank=False))
        t_ex, ex = best_of(repeats, lambda: index.search([q], k=K, rerank=False, exhaustive=True))
        agree &= [n.key for n in pre[0].neighbours] == [n.key for n in ex[0].neighbours]
        rerank = pre[0].candidates * per_candidate
        timings["prefiltered"].append(t_pre + rerank)
        timings["exhaustive"].append(t_ex + ex[0].candidates * per_candidate)
        evaluated.append(pre[0].evaluated)
        candidates.append(pre[0].candidates)
    naive = per_pair * len(index)
    pre, ex = float(np.median(timings["prefiltered"])), float(np.median(timings["exhaustive"]))
    return {
        "count": len(index), "naive": naive, "prefiltered": pre, "exhaustive": ex,
        "speedup_prefiltered": naive / pre, "speedup_exhaustive": naive / ex,
        "evaluated": int(np.median(evaluated)), "candidates": int(np.median(candidates)),
        "bytes_per_image": folder_bytes(index.path) / len(index), "agree": agree,
    }


def report(rows: list[dict]) -> None:
    print(f"\n| N | naive (extrapolated) | exhaustive | speedup | prefiltered | speedup | refined / candidates "
          f"| bytes per image | prefiltered = exhaustive |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['count']:,} | {r['naive']:.1f} s | {r['exhaustive'] * 1e3:.0f} ms "
              f"| {r['speedup_exhaustive']:.0f}x "
              f"| {r['prefiltered'] * 1e3:.0f} ms | **{r['speedup_prefiltered']:.0f}x** "
              f"| {r['evaluated']} / {r['candidates']} | {r['bytes_per_image']:,.0f} | {r['agree']} |")
    print("\n(times: median over queries of the best of repeats; index times include embedding the query and "
          "the exact re-rank of the candidates at the measured per-candidate cost)")


if __name__ == "__main__":
    sys.exit(main())
