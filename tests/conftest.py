"""Shared fixtures: tiny models saved by the tests themselves (no downloads)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# One scratch folder per test session for the temporary files that libraries make outside
# pytest's tmp_path, removed when the session ends. gradio_client alone leaves an empty folder
# in the temp dir for every file it downloads (603 from test_app.py alone). Apps and
# CLI processes started by the tests inherit it through TMPDIR, and their Gradio upload and
# cache folder lies inside it. pytest's own tmp_path stays where it was (PYTEST_DEBUG_TEMPROOT),
# so a failed run's folders are kept for reading.
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
SCRATCH = tempfile.mkdtemp(prefix="bedgen-tests-")
tempfile.tempdir = SCRATCH
os.environ["TMPDIR"] = SCRATCH
os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(SCRATCH, "gradio"))

# One compute thread per process, for this process and every app, CLI and training process
# the tests start (they inherit the environment). The tests' networks are tiny, and the suite
# runs several processes at once (an app beside the test, two sweep workers): with a thread
# per core each, OpenMP's spinning threads contend for the cores and a tiny fine-tuning ran
# 20x slower on a busy 2-core machine (161 s against 7 s with one thread).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Never reach the real Hub from the tests; individual tests point HF_ENDPOINT at a
# local server when they exercise downloads.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Networks converted for OpenVINO (BEDGEN_BACKEND=openvino, tests/test_backends.py) never
# land in the user's cache.
os.environ.setdefault("BEDGEN_COMPILED_CACHE", os.path.join(SCRATCH, "compiled"))

from bedgen.storage.checkpoint import save_checkpoint  # noqa: E402
from bedgen.config.overrides import override  # noqa: E402
from bedgen.config.schema import BedgenConfig, preset  # noqa: E402
from bedgen.models.unet import build_training_scheduler, build_unet  # noqa: E402
from random_weights import save_random_backbone, save_random_inception  # noqa: E402,F401  (fixtures' helpers)


def tiny_config(**changes) -> BedgenConfig:
    """A 16 px, two-level UNet (8, 16 channels): milliseconds per evaluation on CPU."""
    base = {
        "resolution": 16,
        "unet.block_out_channels": (8, 16),
        "unet.down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "unet.up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "unet.norm_num_groups": 4,
        "diffusion.num_train_timesteps": 100,
    }
    base.update(changes)
    return override(preset("tiny"), base)


def perturbed_unet(config, seed: int = 0):
    """``config``'s UNet from ``seed``, every weight perturbed: random init leaves the last conv
    at zero in some layouts, so different seeds give visibly different networks and non-trivial images."""
    torch.manual_seed(seed)
    unet = build_unet(config)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def make_tiny_checkpoint(path: Path, seed: int = 0, **changes) -> Path:
    config = tiny_config(**changes)
    return save_checkpoint(path, perturbed_unet(config, seed), build_training_scheduler(config), config)


def make_tiny_score_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 16 px score model (smld) with random weights, σ from 20 down to 0.01 over 20 levels."""
    from bedgen.families.smld import build_score_scheduler

    config = tiny_config(**{"family": "smld", "preset": "smld-tiny", "score.sigma_max": 20.0,
                            "score.num_levels": 20, "score.langevin_steps": 2,
                            "sampling.scheduler": "langevin", "sampling.steps": 5})
    torch.manual_seed(seed)
    return save_checkpoint(path, build_unet(config), build_score_scheduler(config), config)


def make_tiny_vae_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 16 px VAE (f = 4, 4 x 4 x 4 latent) with random weights, saved like a trained one."""
    from bedgen.models.autoencoders import build_autoencoder
    from bedgen.storage.checkpoint import save_autoencoder_checkpoint

    config = override(preset("vae-tiny"), {
        "resolution": 16, "autoencoder.block_out_channels": (8, 16, 16), "autoencoder.norm_num_groups": 4,
        "autoencoder.latent_channels": 4,
    })
    torch.manual_seed(seed)
    return save_autoencoder_checkpoint(path, build_autoencoder(config), config)


def make_tiny_ldm_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 16 px latent diffusion model: the random VAE above (f = 4) + a tiny UNet on its 4 x 4 latents."""
    from bedgen.models.autoencoders import build_autoencoder

    vae_config = override(preset("vae-tiny"), {
        "resolution": 16, "autoencoder.block_out_channels": (8, 16, 16), "autoencoder.norm_num_groups": 4,
        "autoencoder.latent_channels": 4,
    })
    config = tiny_config(**{"family": "ldm", "preset": "ldm-tiny", "in_channels": 4, "diffusion.clip_sample": False,
                            "latent.scaling_factor": 2.0})
    torch.manual_seed(seed)
    autoencoder = build_autoencoder(vae_config)
    autoencoder.register_to_config(scaling_factor=2.0)
    unet = build_unet(config)
    return save_checkpoint(path, unet, build_training_scheduler(config), config, autoencoder=autoencoder)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``python app.py`` in a subprocess, as a user starts it. As a context manager
    (``with AppProcess(env, cwd) as app``) it waits until the app answers and stops it on
    exit, also when it never became ready."""

    def __init__(self, env: dict[str, str], cwd: Path):
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = cwd / "app.log"
        repo = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, str(repo / "app.py"), "--port", str(self.port)],
            cwd=cwd, env={**os.environ, **env}, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app not ready after {timeout} s:\n{self.log.read_text()}")

    def __enter__(self) -> "AppProcess":
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()


def run_together(*commands: list[str], timeout: float = 300, **popen) -> list:
    """Run independent commands at the same time and wait for all: ``subprocess.run`` results
    (text output captured) in the order given. A CLI process spends most of its seconds importing
    on one core while this process waits: on an otherwise idle machine with two or more cores,
    two at once take about as long as one."""
    import subprocess

    processes = [subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  **popen) for command in commands]
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [subprocess.CompletedProcess(process.args, process.returncode, out, err)
            for process, (out, err) in zip(processes, outputs)]


def build_room_index(root: Path, count: int = 24) -> tuple[Path, Path]:
    """An LPIPS index (AlexNet, random backbone saved to a file) of ``count`` synthetic rooms."""
    from bedgen.evaluation.neighbours import build_index
    from synthetic import write_rooms

    write_rooms(root / "rooms", count, size=48, seed=21)
    weights = save_random_backbone(root / "alexnet-random.safetensors")
    index = build_index(str(root / "rooms"), root / "indexes" / "rooms", resolution=32, lpips_weights=weights,
                        progress=None)
    return index, root / "rooms"


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app serving a folder with one tiny local model and one LPIPS index, offline."""
    root = tmp_path_factory.mktemp("app")
    models = root / "checkpoints"
    make_tiny_checkpoint(models / "tiny")
    make_tiny_score_checkpoint(models / "tiny-smld")
    make_tiny_vae_checkpoint(models / "tiny-vae")
    make_tiny_ldm_checkpoint(models / "tiny-ldm")
    build_room_index(root)
    with AppProcess(
        {
            "BEDGEN_CHECKPOINTS": str(models),
            "BEDGEN_INDEXES": str(root / "indexes"),
            # The Evaluate tab: tests put statistics and sweeps there, then refresh.
            "BEDGEN_REFERENCES": str(root / "references"),
            "BEDGEN_SWEEPS": str(root / "sweeps"),
            "BEDGEN_INCEPTION_WEIGHTS": str(save_random_inception(root / "inception-random.pth")),
            "BEDGEN_DEFAULT_MODEL": str(models / "tiny"),
            "BEDGEN_MAX_IMAGES": "6",
            "HF_HUB_OFFLINE": "1",
        },
        cwd=root,
    ) as app:
        yield app


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SCRATCH, ignore_errors=True)
