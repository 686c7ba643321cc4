"""Which path (bf16 or fp32) bedgen picks on this machine and why; torchvision beside a CPU-only torch."""

import os
import subprocess
import sys

import pytest
import torch

from bedgen.core.device import cpu_bf16_reason, cpu_flags, cpu_has_bf16, cpu_kind, resolve, training_precision

# Flag sets as /proc/cpuinfo prints them (abridged) for the CPUs the README's figures come from.
AVX2_EPYC = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 sha_ni".split()
AVX512_SKYLAKE = AVX2_EPYC + "avx512f avx512dq avx512cd avx512bw avx512vl".split()
AVX512_BF16_EPYC = AVX512_SKYLAKE + "avx512_vnni avx512_bf16 avx512vbmi".split()
AMX_SAPPHIRE = AVX512_BF16_EPYC + "amx_bf16 amx_tile amx_int8".split()


@pytest.mark.parametrize("flags, kind", [
    (AVX2_EPYC, "AVX2"), (AVX512_SKYLAKE, "AVX512"), (AVX512_BF16_EPYC, "AVX512-BF16"), (AMX_SAPPHIRE, "AMX"),
])
def test_cpu_kind_from_flags(flags, kind):
    assert cpu_kind(flags) == kind


def test_cpu_kind_without_x86_flags_falls_back_to_torch():
    # ARM's Features line, or no /proc/cpuinfo at all: what torch dispatches to.
    assert cpu_kind(["fp", "asimd", "sve"]) == torch.backends.cpu.get_cpu_capability()
    assert cpu_kind([]) == torch.backends.cpu.get_cpu_capability()


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("has_bf16, kind, reason", [
    (False, "AVX2", "this CPU has no native bf16 (AVX2 only)"),
    (False, "AVX512", "this CPU has no native bf16 (AVX512 only)"),
    (True, "AVX512-BF16", "this CPU has native bf16 (AVX512-BF16)"),
    (True, "AMX", "this CPU has native bf16 (AMX)"),
    (False, "AVX512-BF16", "this CPU reports AVX512-BF16 but torch cannot run bf16 natively on it"),
])
def test_the_reason_names_the_cpu_kind(has_bf16, kind, reason):
    assert cpu_bf16_reason(has_bf16, kind) == reason


def test_real_detection_on_this_machine():
    kind = cpu_kind()
    print(f"this CPU: {kind}; oneDNN bf16: {cpu_has_bf16()}; auto: {resolve('cpu', 'auto').describe()}")
    capability = torch.backends.cpu.get_cpu_capability()
    if kind in ("AVX512", "AVX512-BF16", "AMX"):
        assert capability in ("AVX512", "AVX512_BF16", "AVX512_VNNI")  # torch sees at least AVX512
    elif kind == "AVX2":
        assert capability == "AVX2"
    if cpu_has_bf16():
        assert kind in ("AVX512-BF16", "AMX") or not cpu_flags()  # native bf16 needs those on x86


def test_placement_says_which_path_and_why():
    auto = resolve("cpu", "auto")
    if cpu_has_bf16():
        assert auto.describe() == f"cpu/bf16: this CPU has native bf16 ({cpu_kind()})"
    else:
        assert auto.describe().startswith("cpu/fp32: this CPU has no native bf16 (")
    assert resolve("cpu", "fp32").describe() == "cpu/fp32: forced by --dtype fp32"
    assert resolve("cpu", "bf16").describe() == "cpu/bf16: forced by --dtype bf16"
    assert resolve("cpu", "fp32") == resolve("cpu", "auto") or cpu_has_bf16()  # the reason is not the place


def test_training_precision_says_why():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU decides the automatic training precision here")
    mode, reason = training_precision("auto")
    assert (mode, reason) == ("bf16" if cpu_has_bf16() else "no", cpu_bf16_reason(cpu_has_bf16(), cpu_kind()))
    assert training_precision("no") == ("no", "forced by mixed_precision=no")


def test_sample_and_interpolate_results_carry_the_reason(tiny_checkpoint, tmp_path):
    from bedgen.sampling.interpolate import interpolate
    from bedgen.sampling.pipeline import load
    from synthetic import write_rooms

    pipe = load(str(tiny_checkpoint))
    auto = resolve("cpu", "auto").describe()
    assert auto.endswith(cpu_bf16_reason(cpu_has_bf16(), cpu_kind()))
    assert pipe.sample(1, 0, 2, "ddim", device="cpu").placement == auto
    assert pipe.sample(1, 0, 2, "ddim", device="cpu", dtype="fp32").placement == "cpu/fp32: forced by --dtype fp32"
    a, b = write_rooms(tmp_path / "rooms", 2, size=16)[:2]
    assert interpolate(pipe, a, b, frames=2, steps=2, device="cpu").placement == auto


def _bedgen_together(*arg_lists) -> list[subprocess.CompletedProcess]:
    """``python -m bedgen ARGS`` for each ARGS, in their own processes as a user runs them, all at once
    (independent runs; see conftest.run_together)."""
    from conftest import run_together

    return run_together(*([sys.executable, "-m", "bedgen", *args] for args in arg_lists),
                        env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _in_process(capsys, *args) -> tuple[int, str, str]:
    from bedgen.cli.main import main

    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY_TRAIN = ["--preset", "tiny", "--resolution", 16, "--set", "unet.block_out_channels=[8,16]",
              "--set", 'unet.down_block_types=["DownBlock2D","DownBlock2D"]',
              "--set", 'unet.up_block_types=["UpBlock2D","UpBlock2D"]', "--set", "unet.norm_num_groups=4",
              "--set", "diffusion.num_train_timesteps=100", "--batch-size", 2, "--max-steps", 1, "--preview-images", 0]


@pytest.mark.slow
def test_cli_sample_and_train_print_the_path_and_why(tiny_checkpoint, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("bedgen would pick the GPU here; this checks the CPU path")
    from synthetic import write_rooms

    auto = resolve("cpu", "auto").describe()  # e.g. "cpu/fp32: this CPU has no native bf16 (AVX2 only)"
    assert cpu_bf16_reason(cpu_has_bf16(), cpu_kind()) in auto
    write_rooms(tmp_path / "rooms", 4, size=16)
    mode, reason = training_precision("auto")
    line = f"precision: cpu/{mode.replace('no', 'fp32')}: {reason}\n"
    sample, train = _bedgen_together(
        ["sample", "--model", tiny_checkpoint, "-n", 1, "--steps", 2, "--out", tmp_path / "s"],
        ["train", "--data", tmp_path / "rooms", "--out", tmp_path / "run", *TINY_TRAIN])
    assert sample.returncode == 0 and auto in sample.stdout, sample.stderr
    assert train.returncode == 0 and line in train.stderr, train.stderr


def test_cli_finetune_and_forced_precision_say_so(tiny_checkpoint, tmp_path, capsys):
    from synthetic import write_rooms

    write_rooms(tmp_path / "rooms", 4, size=16)
    mode, reason = training_precision("auto")
    code, _, err = _in_process(capsys, "finetune", "--model", tiny_checkpoint, "--instance-data", tmp_path / "rooms",
                               "--out", tmp_path / "ft", "--steps", 1, "--batch-size", 1, "--num-class-images", 1,
                               "--no-report")
    assert code == 0 and f"precision: cpu/{mode.replace('no', 'fp32')}: {reason}\n" in err, err
    code, out, _ = _in_process(capsys, "sample", "--model", tiny_checkpoint, "-n", 1, "--steps", 2, "--dtype", "fp32",
                               "--out", tmp_path / "s32")
    assert code == 0 and "cpu/fp32: forced by --dtype fp32" in out
    code, _, err = _in_process(capsys, "train", "--data", tmp_path / "rooms", "--out", tmp_path / "run32", *TINY_TRAIN,
                               "--mixed-precision", "no")
    assert code == 0 and "precision: cpu/fp32: forced by mixed_precision=no" in err


@pytest.mark.slow
def test_the_app_status_says_which_path_and_why(app_server, tmp_path):
    from gradio_client import Client, handle_file
    from synthetic import write_rooms

    client = Client(app_server.url, verbose=False)
    model = str(app_server.log.parent / "checkpoints" / "tiny")
    if torch.cuda.is_available():
        pytest.skip("the app would pick the GPU here; this checks the CPU path")
    auto = resolve("auto", "auto").describe()  # the app runs with the automatic placement
    assert cpu_bf16_reason(cpu_has_bf16(), cpu_kind()) in auto
    *_, status = client.predict(model, 0, 2, "ddim", 1, False, api_name="/generate")
    assert auto in status
    a, b = write_rooms(tmp_path, 2, size=16)
    *_, status = client.predict(model, handle_file(str(a)), handle_file(str(b)), 0.5, 2, "noise", 2, 0, 0.5,
                                api_name="/interpolate")
    assert auto in status


# --- CPU-only torch beside PyPI's torchvision (README: "A lighter CPU-only install") ----------


def _fake_pypi_torchvision(site) -> None:
    """A torchvision like PyPI's beside a CPU torch: its compiled ops cannot load, and its
    import registers a fake kernel for torchvision::nms without checking the op exists."""
    package = site / "torchvision"
    package.mkdir(parents=True)
    (package / "_C.so").write_bytes(b"built against libtorch_cuda.so")
    (package / "__init__.py").write_text(
        "import torch\n"
        "@torch.library.register_fake('torchvision::nms')\n"
        "def meta_nms(dets, scores, iou_threshold):\n"
        "    return dets.new_empty(0, dtype=torch.long)\n"
    )


def test_pypi_torchvision_imports_beside_cpu_torch_after_the_shim(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _fake_pypi_torchvision(tmp_path / "site")
    shim = Path(__file__).resolve().parents[1] / "bedgen" / "core" / "torchvision_cpu.py"
    cpu_torch = "import torch; torch.version.cuda = None\n"  # what a +cpu build reports
    load_shim = ("import importlib.util\n"
                 f"spec = importlib.util.spec_from_file_location('shim', {str(shim)!r})\n"
                 "shim = importlib.util.module_from_spec(spec); spec.loader.exec_module(shim)\n"
                 "assert shim.allow_torchvision_without_ops()\n")

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", cpu_torch + code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, timeout=300)

    bare = python("import torchvision")
    assert "operator torchvision::nms does not exist" in bare.stderr  # the failure, reproduced
    shimmed = python(load_shim + "import torchvision; print(torch.ops.torchvision.nms)")
    assert shimmed.returncode == 0, shimmed.stderr
    assert "torchvision.nms" in shimmed.stdout


def test_import_bedgen_loads_no_torch_and_shims_the_first_torchvision_import(tmp_path):
    """``import bedgen`` installs the shim as an import hook: torchvision, imported afterwards by
    anything, imports beside a CPU torch, and bedgen itself has not imported torch for it."""
    import subprocess
    import sys

    _fake_pypi_torchvision(tmp_path / "site")
    code = ("import sys; import bedgen; assert 'torch' not in sys.modules, 'import bedgen imported torch'\n"
            "import torch; torch.version.cuda = None\n"  # what a +cpu build reports
            "import torchvision; print(torch.ops.torchvision.nms)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torchvision.nms" in run.stdout


def test_the_torchvision_shim_stays_out_of_the_way_where_ops_load():
    """Here torchvision's ops either load (they work after bedgen's import) or this is the CPU-only
    install, where bedgen declared them: then they exist but have no kernel."""
    import torchvision

    import bedgen.core.torchvision_cpu as shim

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    if torchvision.extension._has_ops():
        assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    else:
        assert torch.version.cuda is None and shim.torchvision_ops_library() is not None
        with pytest.raises((NotImplementedError, RuntimeError)):
            torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
