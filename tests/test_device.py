"""Which path (bf16 or fp32) bedgen picks on this machine, and that it says why."""

import pytest
import torch

from bedgen.device import cpu_bf16_reason, cpu_flags, cpu_has_bf16, cpu_kind, resolve, training_precision

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
    from bedgen.interpolate import interpolate
    from bedgen.pipeline import load
    from synthetic import write_rooms

    pipe = load(str(tiny_checkpoint))
    auto = resolve("cpu", "auto").describe()
    assert auto.endswith(cpu_bf16_reason(cpu_has_bf16(), cpu_kind()))
    assert pipe.sample(1, 0, 2, "ddim", device="cpu").placement == auto
    assert pipe.sample(1, 0, 2, "ddim", device="cpu", dtype="fp32").placement == "cpu/fp32: forced by --dtype fp32"
    a, b = write_rooms(tmp_path / "rooms", 2, size=16)[:2]
    assert interpolate(pipe, a, b, frames=2, steps=2, device="cpu").placement == auto


def _cli(capsys, *args) -> tuple[int, str, str]:
    from bedgen.cli import main

    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_sample_and_train_print_the_path_and_why(tiny_checkpoint, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("bedgen would pick the GPU here; this checks the CPU path")
    code, out, _ = _cli(capsys, "sample", "--model", tiny_checkpoint, "-n", 1, "--steps", 2, "--out", tmp_path / "s")
    assert code == 0 and resolve("cpu", "auto").describe() in out
    code, out, _ = _cli(capsys, "sample", "--model", tiny_checkpoint, "-n", 1, "--steps", 2, "--dtype", "fp32",
                        "--out", tmp_path / "s32")
    assert code == 0 and "cpu/fp32: forced by --dtype fp32" in out

    from synthetic import write_rooms

    write_rooms(tmp_path / "rooms", 4, size=16)
    tiny = ["--preset", "tiny", "--resolution", 16, "--set", "unet.block_out_channels=[8,16]",
            "--set", 'unet.down_block_types=["DownBlock2D","DownBlock2D"]',
            "--set", 'unet.up_block_types=["UpBlock2D","UpBlock2D"]', "--set", "unet.norm_num_groups=4", "--set", "diffusion.num_train_timesteps=100",
            "--batch-size", 2, "--max-steps", 1, "--preview-images", 0]
    code, _, err = _cli(capsys, "train", "--data", tmp_path / "rooms", "--out", tmp_path / "run", *tiny)
    assert code == 0, err
    mode, reason = training_precision("auto")
    assert f"precision: cpu/{mode.replace('no', 'fp32')}: {reason}" in err
    code, _, err = _cli(capsys, "train", "--data", tmp_path / "rooms", "--out", tmp_path / "run32", *tiny,
                        "--mixed-precision", "no")
    assert code == 0 and "precision: cpu/fp32: forced by mixed_precision=no" in err


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

