"""Inference engines: ONNX Runtime and OpenVINO give eager's outputs, export once and are cached
on disk, rebuild a damaged cache, auto picks per placement and network size, and anything an
engine cannot do runs on PyTorch eager with a reason."""

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

from bedgen.core.device import resolve
from bedgen.core.errors import BedgenError
from bedgen.models.unet import build_training_scheduler, build_unet
from bedgen.sampling.backends import ENGINE_MIN_PARAMETERS, OnnxRuntimeEngine, OpenVINOEngine, check_backend, choose_backend
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


def test_the_choice_per_placement_and_network_size(monkeypatch):
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
    large, small = ENGINE_MIN_PARAMETERS, ENGINE_MIN_PARAMETERS - 1
    # auto: ONNX Runtime for a large network computing in fp32 on a CPU; eager for bf16, a GPU, a small one
    assert choose_backend(None, CPU, large) == ("onnxruntime", "auto: the fastest fp32 CPU engine measured "
                                                              "(bench/RESULTS.md)")
    assert choose_backend(None, CPU)[0] == "onnxruntime"  # size unknown: taken as large
    assert choose_backend(None, resolve("cpu", "bf16"), large) == (
        "eager", "auto: PyTorch's native bf16 autocast on this CPU")
    assert choose_backend(None, CPU, small)[0] == "eager"
    assert "evaluates in milliseconds" in choose_backend(None, CPU, small)[1]
    cuda = replace(CPU, device=torch.device("cuda"), dtype=torch.bfloat16)
    assert choose_backend(None, cuda, large) == ("eager", "auto: PyTorch's autocast on cuda")
    # asked for: whatever the size, where the engine can run
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
    with pytest.raises(BedgenError, match="unknown backend 'tensorrt'; choose one of auto, eager, onnxruntime, "
                                          "openvino"):
        check_backend(None)


def test_auto_runs_a_large_network_on_onnx_runtime_and_a_small_one_eager(tmp_path, monkeypatch):
    """The default path itself: no backend named, a CPU computing in fp32."""
    monkeypatch.delenv("BEDGEN_BACKEND", raising=False)
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
