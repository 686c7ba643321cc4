"""Inference engines: NNPACK's Winograd convolutions, ONNX Runtime and OpenVINO give eager's
outputs; the exported ones export once and are cached on disk and rebuild a damaged cache; auto
picks per placement, CPU kind and network size; and anything an engine cannot do runs on PyTorch
eager with a reason."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bedgen.core.device import cpu_kind, resolve
from bedgen.core.errors import BedgenError
from bedgen.models.unet import build_training_scheduler, build_unet
from bedgen.sampling.backends import (
    ENGINE_MIN_PARAMETERS, WINOGRAD_MIN_IMAGE, WINOGRAD_MIN_SIDE, OnnxRuntimeEngine, OpenVINOEngine, channels_last_weights, check_backend,
    choose_backend, nnpack_available,
)
from bedgen.sampling.denoiser import Denoiser
from bedgen.sampling.pipeline import Pipeline
from bedgen.storage.checkpoint import CheckpointInfo
from conftest import tiny_config

# openvino is optional and not in requirements-dev.txt: loaded into the suite's process it made a
# later test segfault once in a clean-clone run (its threads and fork), so CI skips its cases.
OPENVINO_MISSING = importlib.util.find_spec("openvino") is None
ENGINE_NAMES = [
    "onnxruntime",
    pytest.param("openvino", marks=pytest.mark.skipif(
        OPENVINO_MISSING, reason="openvino is not installed (optional engine: pip install openvino)")),
]
# The file each engine's cache holds the weights in (a damaged one must be noticed).
WEIGHTS_FILE = {"onnxruntime": "unet.onnx", "openvino": "unet.bin"}

CPU = resolve("cpu", "fp32")
EAGER = replace(CPU, backend="eager")
# The other engines' fp32 kernels sum in another order than oneDNN's: float rounding, nothing more.
ATOL = 1e-4


@pytest.fixture(params=ENGINE_NAMES)
def engine(request):
    return request.param


def on(engine):
    return replace(CPU, backend=engine)


@pytest.fixture(scope="module")
def model():
    """8 px, learned variance: 6 output channels, [ε, v]."""
    config = tiny_config(**{"resolution": 8, "diffusion.variance_type": "learned_range",
                            "diffusion.loss_type": "hybrid"})
    torch.manual_seed(0)
    return build_unet(config).eval(), build_training_scheduler(config)


def denoiser(unet, training, cache) -> Denoiser:
    d = Denoiser.for_model(unet, training)
    for engine in d.engines.values():
        engine.cache_dir = cache
    return d


def folders(cache):
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def test_an_engine_gives_eager_outputs_at_any_batch_and_timestep_form(model, engine, tmp_path):
    d = denoiser(*model, tmp_path)
    g = torch.Generator().manual_seed(1)
    for batch, t in ((1, 7), (3, torch.tensor(42)), (2, torch.tensor([3.0, 90.0]))):
        x = torch.randn(batch, 3, 8, 8, generator=g)
        ours = d.network(x, t, on(engine), keep_variance=True)
        eager = d.network(x, t, EAGER, keep_variance=True)
        assert ours.shape == eager.shape == (batch, 6, 8, 8) and ours.dtype == torch.float32
        assert (ours - eager).abs().max() < ATOL
    assert d.engines[engine].converted == 1, "one export serves every batch size (dynamic batch)"
    assert len(folders(tmp_path)) == 1


def test_a_second_load_reads_the_disk_cache(model, engine, tmp_path):
    x = torch.randn(2, 3, 8, 8)
    first = denoiser(*model, tmp_path)
    first.network(x, 5, on(engine))
    (folder,) = folders(tmp_path)
    stamp = (folder / WEIGHTS_FILE[engine]).stat().st_mtime_ns
    second = denoiser(*model, tmp_path)  # a new load of the same weights: another process, the next start
    out = second.network(x, 5, on(engine))
    assert (second.engines[engine].converted, second.engines[engine].loaded) == (0, 1)
    assert (folder / WEIGHTS_FILE[engine]).stat().st_mtime_ns == stamp
    assert (out - second.network(x, 5, EAGER)).abs().max() < ATOL


def test_a_damaged_cache_is_exported_again_and_replaced(model, engine, tmp_path, caplog):
    x = torch.randn(1, 3, 8, 8)
    denoiser(*model, tmp_path).network(x, 5, on(engine))
    (folder,) = folders(tmp_path)
    name = WEIGHTS_FILE[engine]
    weights = bytearray((folder / name).read_bytes())
    weights[len(weights) // 2] ^= 0xFF  # one flipped byte: a model that may read fine but computes wrong
    (folder / name).write_bytes(bytes(weights))
    d = denoiser(*model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="bedgen.backends"):
        out = d.network(x, 5, on(engine))
    assert f"unusable (its file {name} does not match its recorded SHA-256); exporting it again" in caplog.text
    assert (d.engines[engine].converted, d.engines[engine].loaded) == (1, 0)
    assert (out - d.network(x, 5, EAGER)).abs().max() < ATOL
    again = denoiser(*model, tmp_path)
    again.network(x, 5, on(engine))
    assert again.engines[engine].loaded == 1, "the rebuilt cache is good again"


def test_weights_edited_in_place_are_exported_again(engine, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(resolution=8)
    unet = build_unet(config).eval()
    d = denoiser(unet, build_training_scheduler(config), tmp_path)
    x = torch.randn(1, 3, 8, 8)
    before = d.network(x, 5, on(engine))
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)  # as a fine-tuning step or an EMA copy would
    after = d.network(x, 5, on(engine))
    assert (after - before - 1.0).abs().max() < ATOL
    assert (after - d.network(x, 5, EAGER)).abs().max() < ATOL
    assert d.engines[engine].converted == 2 and len(folders(tmp_path)) == 2


def test_a_cache_folder_that_cannot_be_written_costs_an_export_not_the_call(model, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    d = denoiser(*model, blocker)
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="bedgen.backends"):
        out = d.network(x, 5, on("onnxruntime"))
    assert "could not cache the ONNX Runtime network in" in caplog.text
    assert (out - d.network(x, 5, EAGER)).abs().max() < ATOL
    assert d.engines["onnxruntime"].converted == 1


def test_without_the_engine_the_call_runs_eager_and_says_why_once(model, engine, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, engine, None)  # what `import X` sees when it is not installed
    d = denoiser(*model, tmp_path)
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="bedgen.backends"):
        out = d.network(x, 5, on(engine))
        d.network(x, 5, on(engine))
    assert torch.equal(out, d.network(x, 5, EAGER))
    assert caplog.text.count(f"running the UNet on PyTorch eager: {engine} is not installed") == 1
    assert folders(tmp_path) == []


def test_a_network_an_engine_cannot_export_runs_eager(engine, tmp_path, caplog):
    cls = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVINOEngine}[engine]
    untraceable = cls(torch.nn.Identity(), lambda x, t: x.numpy(), tmp_path)  # not a tensor out
    with caplog.at_level(logging.WARNING, logger="bedgen.backends"):
        assert untraceable.run(torch.ones(1, 3, 8, 8), torch.tensor(2.0)) is None
    label = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[engine]
    assert f"running the UNet on PyTorch eager: {label} could not prepare the network" in caplog.text
    assert folders(tmp_path) == []


def test_the_choice_per_placement_cpu_kind_and_network_size(monkeypatch):
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    large, small = ENGINE_MIN_PARAMETERS, ENGINE_MIN_PARAMETERS - 1
    # auto, for a large network computing in fp32 on a CPU: Winograd on AVX2 (measured there),
    # ONNX Runtime on the other kinds; eager for bf16, a GPU, a small network
    assert choose_backend(None, CPU, large, kind="AVX512") == (
        "onnxruntime", "auto: the fastest fp32 CPU engine measured (bench/RESULTS.md)")
    assert choose_backend(None, CPU, kind="AVX512")[0] == "onnxruntime"  # size unknown: taken as large
    assert choose_backend(None, resolve("cpu", "bf16"), large, kind="AVX512-BF16") == (
        "eager", "auto: PyTorch's native bf16 autocast on this CPU")
    assert choose_backend(None, CPU, small, kind="AVX2")[0] == "eager"
    assert "evaluates in milliseconds" in choose_backend(None, CPU, small)[1]
    cuda = replace(CPU, device=torch.device("cuda"), dtype=torch.bfloat16)
    assert choose_backend(None, cuda, large) == ("eager", "auto: PyTorch's autocast on cuda")
    # asked for: whatever the size, where the engine can run
    assert choose_backend("winograd", CPU, small) == ("winograd", "asked for")
    assert choose_backend("winograd", cuda) == ("eager", "NNPACK Winograd runs on the CPU only, this request runs on cuda")
    assert choose_backend("openvino", CPU, small) == ("openvino", "asked for")
    assert choose_backend("onnxruntime", CPU, small) == ("onnxruntime", "asked for")
    assert choose_backend("eager", CPU, large) == ("eager", "asked for")
    assert choose_backend("openvino", resolve("cpu", "bf16")) == (
        "eager", "OpenVINO runs fp32 only, this request computes in bf16")
    assert choose_backend("onnxruntime", cuda) == (
        "eager", "ONNX Runtime runs on the CPU only, this request runs on cuda")
    monkeypatch.setenv("BEDGEN_BACKEND", "openvino")
    assert choose_backend(None, CPU)[0] == "openvino" and check_backend("eager") == "eager"
    monkeypatch.setenv("BEDGEN_BACKEND", "tensorrt")
    with pytest.raises(BedgenError, match="unknown backend 'tensorrt'; choose one of auto, eager, winograd, "
                                          "onnxruntime, openvino"):
        check_backend(None)


@pytest.mark.skipif(not nnpack_available(), reason="needs NNPACK (an x86 CPU with AVX2)")
def test_auto_on_avx2_picks_winograd_for_large_images_where_nnpack_runs(monkeypatch):
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    large = ENGINE_MIN_PARAMETERS
    assert choose_backend(None, CPU, large, kind="AVX2") == (
        "winograd", "auto: the fastest fp32 path measured on AVX2 CPUs (bench/RESULTS.md)")
    assert choose_backend(None, CPU, large, kind="AVX2", side=WINOGRAD_MIN_IMAGE)[0] == "winograd"
    # on small images NNPACK's transforms cost more than they save: ONNX Runtime measured faster
    assert choose_backend(None, CPU, large, kind="AVX2", side=WINOGRAD_MIN_IMAGE - 1)[0] == "onnxruntime"
    assert channels_last_weights(CPU, large, side=WINOGRAD_MIN_IMAGE - 1)


def test_auto_on_avx2_without_nnpack_picks_onnx_runtime(monkeypatch):
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)  # a PyTorch built without it
    assert choose_backend(None, CPU, ENGINE_MIN_PARAMETERS, kind="AVX2")[0] == "onnxruntime"


def test_auto_runs_a_large_network_on_onnx_runtime_and_a_small_one_eager(tmp_path, monkeypatch):
    """The default path itself: no backend named, a CPU computing in fp32 (where auto picks ONNX
    Runtime: on this machine's kind unless it is an AVX2 one, where NNPACK is taken away)."""
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)
    auto = resolve("cpu", "fp32")
    torch.manual_seed(0)
    config = tiny_config(**{"resolution": 8, "unet.block_out_channels": (160, 320), "unet.norm_num_groups": 32})
    large = denoiser(build_unet(config).eval(), build_training_scheduler(config), tmp_path)
    assert large.parameters >= ENGINE_MIN_PARAMETERS
    x = torch.randn(2, 3, 8, 8)
    out = large.network(x, 5, auto)
    assert large.engines["onnxruntime"].converted == 1 and len(folders(tmp_path)) == 1
    assert (out - large.network(x, 5, EAGER)).abs().max() < ATOL
    assert large.describe(auto) == f"{auto.describe()}; on ONNX Runtime"  # what the status line says
    small = denoiser(*_tiny(), tmp_path)
    small.network(x, 5, auto)
    assert small.engines["onnxruntime"].converted == 0 and len(folders(tmp_path)) == 1
    assert small.describe(auto) == auto.describe()


def test_a_fall_back_is_not_reported_as_the_engine(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    d = denoiser(*model, tmp_path)
    d.network(torch.randn(1, 3, 8, 8), 5, on("onnxruntime"))
    assert d.describe(on("onnxruntime")) == CPU.describe()


def _tiny():
    config = tiny_config(resolution=8)
    torch.manual_seed(0)
    return build_unet(config).eval(), build_training_scheduler(config)


def _pipeline(resolution=8):
    config = tiny_config(resolution=resolution)
    torch.manual_seed(0)
    return Pipeline(build_unet(config), build_training_scheduler(config),
                    CheckpointInfo("tiny", Path("."), "bedgen", "ddpm", config))


def test_sampled_pixels_match_eager_within_the_golden_tolerance(engine, tmp_path, monkeypatch):
    """tests/test_golden_sampling.py's tolerance (2 uint8 levels) holds for the other engines too."""
    monkeypatch.setenv("BEDGEN_COMPILED_CACHE", str(tmp_path))
    pipe = _pipeline()
    run = dict(n=3, seed=4, steps=10, scheduler="dpmsolver++", device="cpu", dtype="fp32", batch_size=2)
    ours = np.stack([np.asarray(im) for im in pipe.generate(**run, backend=engine)]).astype(int)
    eager = np.stack([np.asarray(im) for im in pipe.generate(**run, backend="eager")]).astype(int)
    assert np.abs(ours - eager).max() <= 2
    assert pipe.denoiser.engines[engine].converted == 1
    with pytest.raises(BedgenError, match="unknown backend 'onnx'"):
        pipe.generate(n=1, backend="onnx")


def test_concurrent_requests_on_one_pipeline_share_nothing(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("BEDGEN_COMPILED_CACHE", str(tmp_path))
    pipe = _pipeline()
    run = dict(steps=4, scheduler="ddim", device="cpu", dtype="fp32", backend=engine)
    alone = {seed: np.asarray(pipe.generate(n=seed, seed=seed, **run)[0]) for seed in (1, 2)}
    together = {}

    def request(seed):
        together[seed] = np.asarray(pipe.generate(n=seed, seed=seed, **run)[0])

    threads = [threading.Thread(target=request, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(alone[s], together[s]) for s in (1, 2))


# --- the Winograd engine (NNPACK) -------------------------------------------------------------

needs_nnpack = pytest.mark.skipif(not nnpack_available(), reason="needs NNPACK (an x86 CPU with AVX2)")
WINOGRAD = replace(CPU, backend="winograd")


def _winograd_model(resolution=WINOGRAD_MIN_SIDE, channels_last=True):
    """A network whose first level's 3x3 convolutions see WINOGRAD_MIN_SIDE-pixel maps, with its
    weights in channels_last (as a forced winograd request may find them; NNPACK reads an NCHW copy)."""
    config = tiny_config(resolution=resolution)
    torch.manual_seed(0)
    unet = build_unet(config).eval()
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return unet, build_training_scheduler(config)


@needs_nnpack
def test_winograd_gives_eager_outputs_at_any_batch_and_timestep_form(tmp_path):
    d = denoiser(*_winograd_model(), tmp_path)
    g = torch.Generator().manual_seed(1)
    for batch, t in ((1, 7), (3, torch.tensor(42)), (2, torch.tensor([3.0, 90.0]))):
        x = torch.randn(batch, 3, WINOGRAD_MIN_SIDE, WINOGRAD_MIN_SIDE, generator=g)
        routed = d.engines["winograd"].routed
        ours = d.network(x, t, WINOGRAD)
        assert d.engines["winograd"].routed > routed, "the large maps' 3x3 convolutions went to NNPACK"
        eager = d.network(x, t, EAGER)
        assert ours.shape == eager.shape and ours.dtype == torch.float32
        assert (ours - eager).abs().max() < ATOL
    assert d.describe(WINOGRAD) == f"{WINOGRAD.describe()}; on NNPACK Winograd"
    assert folders(tmp_path) == [], "nothing is exported or cached"


@needs_nnpack
def test_winograd_leaves_small_maps_and_other_convolutions_to_pytorch(tmp_path):
    d = denoiser(*_winograd_model(resolution=8), tmp_path)  # every map under WINOGRAD_MIN_SIDE
    x = torch.randn(1, 3, 8, 8)
    out = d.network(x, 5, WINOGRAD)
    assert d.engines["winograd"].routed == 0
    assert (out - d.network(x, 5, EAGER)).abs().max() < ATOL
    assert d.describe(WINOGRAD) == WINOGRAD.describe(), "a call NNPACK took no part in is not reported as its"
    engine = d.engines["winograd"]
    big = torch.randn(1, 4, 40, 40)
    assert engine.convolve(big, torch.randn(4, 4, 3, 3), stride=2, padding=1) is None  # strided
    assert engine.convolve(big, torch.randn(4, 4, 1, 1)) is None  # 1x1
    assert engine.convolve(big, torch.randn(4, 2, 3, 3), padding=1, groups=2) is None  # grouped
    assert engine.convolve(big, torch.randn(4, 4, 3, 3), padding=1, dilation=2) is None  # dilated
    assert engine.convolve(big.double(), torch.randn(4, 4, 3, 3).double(), padding=1) is None  # not fp32
    w = torch.randn(4, 4, 3, 3)
    assert (engine.convolve(big, w, padding=1) - torch.nn.functional.conv2d(big, w, padding=1)).abs().max() < ATOL


@needs_nnpack
def test_winograd_sees_weights_edited_in_place(tmp_path):
    unet, training = _winograd_model()
    d = denoiser(unet, training, tmp_path)
    x = torch.randn(1, 3, WINOGRAD_MIN_SIDE, WINOGRAD_MIN_SIDE)
    before = d.network(x, 5, WINOGRAD)
    with torch.no_grad():
        unet.conv_in.weight.mul_(1.5)  # a channels_last weight NNPACK reads through its NCHW copy
    after = d.network(x, 5, WINOGRAD)
    assert (after - before).abs().max() > 1e-3, "the edit changed the output"
    assert (after - d.network(x, 5, EAGER)).abs().max() < ATOL


@needs_nnpack
def test_winograd_sampled_pixels_match_eager_within_the_golden_tolerance():
    pipe = _pipeline(resolution=WINOGRAD_MIN_SIDE)
    run = dict(n=2, seed=4, steps=10, scheduler="dpmsolver++", device="cpu", dtype="fp32", batch_size=2)
    ours = np.stack([np.asarray(im) for im in pipe.generate(**run, backend="winograd")]).astype(int)
    assert pipe.denoiser.engines["winograd"].routed > 0
    eager = np.stack([np.asarray(im) for im in pipe.generate(**run, backend="eager")]).astype(int)
    assert np.abs(ours - eager).max() <= 2


@needs_nnpack
def test_winograd_and_eager_requests_at_once_on_one_pipeline_share_nothing():
    """The redirection is per thread: an eager request running beside a Winograd one on the same
    network gets exactly what it gets alone, and so does the Winograd one."""
    pipe = _pipeline(resolution=WINOGRAD_MIN_SIDE)
    run = dict(steps=3, scheduler="ddim", device="cpu", dtype="fp32")
    backends = {1: "winograd", 2: "eager", 3: "winograd"}
    alone = {s: np.asarray(pipe.generate(n=1, seed=s, backend=b, **run)[0]) for s, b in backends.items()}
    together = {}

    def request(seed):
        together[seed] = np.asarray(pipe.generate(n=1, seed=seed, backend=backends[seed], **run)[0])

    threads = [threading.Thread(target=request, args=(seed,)) for seed in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(alone[s], together[s]) for s in backends)


def test_without_nnpack_winograd_runs_eager_and_says_why_once(model, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)  # a PyTorch built without it
    d = denoiser(*model, tmp_path)
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="bedgen.backends"):
        out = d.network(x, 5, WINOGRAD)
        d.network(x, 5, WINOGRAD)
    assert torch.equal(out, d.network(x, 5, EAGER))
    assert caplog.text.count("running the UNet on PyTorch eager: NNPACK is not available") == 1
    assert d.describe(WINOGRAD) == WINOGRAD.describe()


@needs_nnpack
@pytest.mark.skipif(cpu_kind() != "AVX2", reason=f"auto picks Winograd on AVX2 CPUs; this one is {cpu_kind()}")
def test_auto_runs_a_large_network_on_winograd_on_this_avx2_cpu(tmp_path, monkeypatch):
    """The default path itself on an AVX2 CPU: no backend named, fp32."""
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    levels = (8, 16, 16, 32, 320)  # over 5 M weights, nearly all on the 16 px level: cheap at 256 px
    config = tiny_config(**{"resolution": WINOGRAD_MIN_IMAGE, "unet.block_out_channels": levels,
                            "unet.down_block_types": ("DownBlock2D",) * len(levels),
                            "unet.up_block_types": ("UpBlock2D",) * len(levels)})
    torch.manual_seed(0)
    large = denoiser(build_unet(config).eval(), build_training_scheduler(config), tmp_path)
    assert large.parameters >= ENGINE_MIN_PARAMETERS
    x = torch.randn(1, 3, WINOGRAD_MIN_IMAGE, WINOGRAD_MIN_IMAGE)
    out = large.network(x, 5, CPU)
    assert large.engines["winograd"].routed > 0
    assert large.describe(CPU) == f"{CPU.describe()}; on NNPACK Winograd"
    assert (out - large.network(x, 5, EAGER)).abs().max() < ATOL


def test_weights_are_laid_out_for_the_engine_auto_runs(monkeypatch):
    """channels_last for eager and the GPU's kernels; NCHW where auto runs Winograd (NNPACK reads
    NCHW; channels_last weights would make the activations switch layouts at every convolution)."""
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    large, small = ENGINE_MIN_PARAMETERS, ENGINE_MIN_PARAMETERS - 1
    assert channels_last_weights(CPU, small)
    assert channels_last_weights(replace(CPU, device=torch.device("cuda"), dtype=torch.bfloat16), large)
    assert channels_last_weights(CPU, large) == (choose_backend(None, CPU, large)[0] != "winograd")
    monkeypatch.setenv("BEDGEN_BACKEND", "eager")
    assert channels_last_weights(CPU, large)
    monkeypatch.setenv("BEDGEN_BACKEND", "winograd")
    assert not channels_last_weights(CPU, small)


def test_a_pipeline_moves_its_weights_in_the_layout_of_its_engine(monkeypatch):
    pipe = _pipeline(resolution=WINOGRAD_MIN_SIDE)
    monkeypatch.setenv("BEDGEN_BACKEND", "winograd")
    pipe.generate(n=1, steps=1, scheduler="ddim", device="cpu", dtype="fp32")
    assert pipe.unet.conv_in.weight.is_contiguous()
    fresh = _pipeline(resolution=WINOGRAD_MIN_SIDE)
    monkeypatch.setenv("BEDGEN_BACKEND", "eager")
    fresh.generate(n=1, steps=1, scheduler="ddim", device="cpu", dtype="fp32")
    assert fresh.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fresh.unet.conv_in.weight.is_contiguous()
