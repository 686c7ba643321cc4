"""One trainer for every family (docs/architecture.md: the family supplies a per-sample loss).

Run directory (its names and readers: bedgen.storage.run_folder)::

    RUN/bedgen-run.json          status, latest checkpoint, step (the Train tab polls it)
    RUN/metrics.jsonl            loss, lr, grad-norm, img/s, EMA decay ... every log_every steps
    RUN/previews/step-XXXXXX.png preview grids with fixed seeds (latest.png = newest)
    RUN/checkpoints/step-XXXXXX/ checkpoint (EMA weights in unet/) + training_state/
    RUN/best-fid/                the EMA weights with the lowest FID so far (with --fid-every)

FID during training (``--fid-every N``): every N steps and at the last step, the EMA
weights generate ``fid_samples`` images from seeds seed .. seed+M-1 (the same every
time, so differences between steps are not sampling noise), split over the processes;
the main process appends {"step", "fid", "fid_samples", ...} to metrics.jsonl. The last
such record is the run's final FID.

Exact resume: the randomness of optimizer step k on process r (timesteps, noise,
flips, dropout) is drawn from generators seeded by (seed, r, k), and the data
order of epoch e is a permutation seeded by (seed, e). So step, data position,
weights, EMA, optimizer and LR-scheduler state are all a run needs to continue
the same loss curve; they are saved as safetensors + JSON.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..storage.checkpoint import CheckpointInfo
from ..storage.run_folder import BEST_FID_DIR, LATEST_PREVIEW, RunFolder
from ..core.files import atomic_write
from ..config.schema import BedgenConfig
from ..data.datasets import ImageDataset, open_dataset
from ..data.training_data import images_of, open_training_data
from ..core.device import training_precision
from ..core.errors import BedgenError, one_line
from ..families import get_family
from ..families.base import as_saved  # noqa: F401  (re-exported: part of the trainer API)
from ..core.images import grid
from ..sampling.pipeline import Pipeline
from ..core.state_io import load_state, save_state

STATE_DIR = "training_state"
EventFn = Callable[[dict[str, Any]], None]


class TrainingDiverged(BedgenError):
    """The loss or the gradient became NaN/inf and the run was stopped."""


class CheckpointWriteError(BedgenError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is kept."""


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    position: int = 0  # images consumed from the endless shuffled stream (all processes)
    images_seen: int = 0
    best_val_loss: float = math.inf
    bad_validations: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0
    best_fid: float = math.inf
    best_fid_step: int = -1


def step_seed(seed: int, rank: int, step: int) -> int:
    """A distinct 63-bit seed for (run seed, process, step) — SplitMix64-style mixing."""
    z = (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def resolve_mixed_precision(name: str) -> str:
    """``auto``: bf16 where the hardware runs it natively (recent GPUs, AVX512-BF16/AMX CPUs)."""
    return training_precision(name)[0]


def _forget_previous_accelerator() -> None:
    """accelerate keeps one global state per process; a second run in the same process
    (tests, sweeps, a notebook) may want another precision, so a single-process run
    starts from a clean state. Distributed launches keep theirs."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        AcceleratorState._reset_state(reset_partial_state=True)


class StreamBatches:
    """Batches of dataset indices from an endless stream of seeded epoch permutations."""

    def __init__(self, size: int, batch: int, world: int, rank: int, seed: int, position: int):
        self.size, self.batch, self.world, self.rank, self.seed = size, batch, world, rank, seed
        self.position = position

    def _index(self, p: int) -> int:
        epoch, offset = divmod(p, self.size)
        if getattr(self, "_epoch", None) != epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, 10_000, epoch))
            self._perm, self._epoch = torch.randperm(self.size, generator=g).tolist(), epoch
        return self._perm[offset]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            start = self.position + self.rank * self.batch
            yield [self._index(p) for p in range(start, start + self.batch)]
            self.position += self.batch * self.world


class Trainer:
    """Build with a config and a run folder, then call :meth:`train`."""

    def __init__(self, config: BedgenConfig, run_dir: str | Path, resume: bool = False,
                 on_event: EventFn | None = None, progress: bool = True):
        config.validate()
        self.config, self.run_dir, self.on_event = config, Path(run_dir), on_event
        self.run = RunFolder(self.run_dir)
        # cpu=True on machines without an accelerator: under torchrun / `accelerate launch
        # --multi_gpu` that selects multi-process CPU training (gloo) instead of one process.
        no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        _forget_previous_accelerator()
        precision, self.precision_reason = training_precision(config.train.mixed_precision)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=no_accelerator)
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.show_progress = progress and self.is_main
        self.family = get_family(config)
        self.data = open_training_data(config)  # the images, or (instance, class) pairs when fine-tuning
        self.family.prepare(images_of(self.data))  # e.g. σ_max from the data; recorded in the saved config
        self.val_data = self._validation_data()
        self.fid_inception, self.fid_reference = self._prepare_fid()  # bad input fails before any write
        self._prepare_run_dir(resume)
        torch.manual_seed(config.train.seed)  # the initial weights are part of the run's seed
        self.model = self.family.build_model()
        if config.finetune.init_from and not (resume and self.latest_checkpoint() is not None):
            self._start_from(config.finetune.init_from)  # before the EMA, which starts from these weights
        self.ema = EMAModel(
            self.model.parameters(), decay=config.train.ema_decay, use_ema_warmup=True,
            power=config.train.ema_power, foreach=True,
        )
        self.optimizer = self._make_optimizer()
        self.max_steps = self._max_steps()
        self.lr_scheduler = get_scheduler(
            "cosine" if config.train.lr_schedule == "cosine" else "constant_with_warmup",
            self.optimizer, num_warmup_steps=config.train.warmup_steps, num_training_steps=self.max_steps,
        )
        self.state = TrainState()
        self.failed_indices: set[int] = set()
        if resume and self.latest_checkpoint() is not None:
            self._load(self.latest_checkpoint())
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.ema.to(self.device)
        self.stop_requested = False
        self._last_preview_step = -1
        self._fid_step, self._fid_result = -1, None  # the latest FID: at which step, and the result (main)

    # --- setup --------------------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool) -> None:
        try:
            self.run.checkpoints.mkdir(parents=True, exist_ok=True)
            self.run.previews.mkdir(exist_ok=True)
            # One probe per process: ranks share the folder and must not unlink each other's.
            probe = self.run_dir / f".write-test-{self.accelerator.process_index}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise BedgenError(f"cannot write to run folder '{self.run_dir}': {e.strerror or e}") from e
        if not resume and self.latest_checkpoint() is not None:
            raise BedgenError(
                f"'{self.run_dir}' already holds a training run; pass --resume to continue it or choose a new --out"
            )

    def _start_from(self, ref: str) -> None:
        """Fine-tuning: the network starts from the weights of the model ``ref``."""
        source = self.family.load_network(ref)
        try:
            self.model.load_state_dict(source.state_dict())
        except RuntimeError as e:
            raise BedgenError(
                f"the weights of '{ref}' do not fit this config's network: {str(e).splitlines()[0]}"
            ) from e

    def _validation_data(self) -> ImageDataset | None:
        if self.config.data.validation_fraction <= 0:
            return None
        return open_dataset(self.config.data, self.config.resolution, "validation")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        params = self.model.parameters()
        # Fused kernels update all parameters in one pass (CPU and CUDA, torch >= 2.4).
        if t.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, fused=True)
        return torch.optim.Adadelta(params, lr=t.lr, weight_decay=t.weight_decay)

    @property
    def images_per_step(self) -> int:
        t = self.config.train
        return t.batch_size * t.grad_accum * self.accelerator.num_processes

    def _max_steps(self) -> int:
        t = self.config.train
        if t.max_steps is not None:
            return t.max_steps
        return math.ceil(t.epochs * len(self.data) / self.images_per_step)

    # --- the loop -----------------------------------------------------------------------

    def train(self) -> Path:
        """Train to max_steps (or until stopped); returns the last checkpoint directory.

        A write that fails (a full disk: checkpoint, status, metrics or preview) stops the
        run with :class:`CheckpointWriteError`, naming the checkpoint that is kept."""
        try:
            return self._train()
        except CheckpointWriteError:
            raise
        except OSError as e:
            raise self._write_failed(None, e) from e

    def _train(self) -> Path:
        self._install_signal_handlers()
        self._write_run_status("running")
        batches = self._batches()
        bar = self._progress_bar()
        window: list[float] = []
        tick, tick_images = time.perf_counter(), 0
        last_checkpoint = self.latest_checkpoint()
        early_stopped = False
        try:
            while self.state.step < self.max_steps and not self.stop_requested:
                loss, grad_norm = self._train_step(batches)
                if loss is None:  # non-finite and rolled back
                    batches = self._batches()
                    continue
                window.append(loss)
                tick_images += self.images_per_step
                step = self.state.step
                if step % self.config.train.log_every == 0 or step == self.max_steps:
                    now = time.perf_counter()
                    rate = tick_images / max(now - tick, 1e-9)
                    self._log(sum(window) / len(window), grad_norm, rate)
                    if bar is not None:
                        bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", img_s=f"{rate:.1f}")
                    window, tick, tick_images = [], now, 0
                if bar is not None:
                    bar.update(1)
                if self._due(self.config.train.validate_every) and self.val_data is not None:
                    if self._validate_and_check_patience():
                        early_stopped = True
                        break
                if self._due(self.config.train.preview_every):
                    self._preview()
                if self._due(self.config.train.fid_every) or (step == self.max_steps and self._fid_pending()):
                    self._measure_fid()  # before the checkpoint, which then carries the result
                if self._due(self.config.train.checkpoint_every) or step == self.max_steps:
                    last_checkpoint = self.save()
            if early_stopped and self._fid_pending():
                self._measure_fid()  # the run still gets a final FID
            if self.state.step != self._step_of(last_checkpoint):
                last_checkpoint = self.save()  # stopped between checkpoints
            if self.state.step != self._last_preview_step:
                self._preview()
        finally:
            if bar is not None:
                bar.close()
        status = "finished" if self.state.step >= self.max_steps else "stopped"
        self._write_run_status(status, message=self._skipped_message())
        self._emit({"event": status, "step": self.state.step, "checkpoint": str(last_checkpoint)})
        if self.is_main and self.failed_indices:
            print(self._skipped_message(), flush=True)
        return last_checkpoint

    def _due(self, every: int) -> bool:
        return every > 0 and self.state.step % every == 0

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        t = self.config.train
        sampler = StreamBatches(
            len(self.data), t.batch_size, self.accelerator.num_processes,
            self.accelerator.process_index, t.seed, self.state.position,
        )
        loader = torch.utils.data.DataLoader(
            self.data, batch_sampler=sampler, num_workers=t.num_workers,
            persistent_workers=t.num_workers > 0,
        )
        return iter(loader)

    def _train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> tuple[float | None, float]:
        t = self.config.train
        rank = self.accelerator.process_index
        seed = step_seed(t.seed, rank, self.state.step)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator(self.device).manual_seed(seed)
        self.model.train()
        total = 0.0
        all_t, all_losses = [], []
        for micro in range(t.grad_accum):
            batch = next(batches)
            x0, weights = self._to_model_input(batch, generator)
            with self.accelerator.autocast():
                losses, timesteps, raw = self.family.loss(self.model, x0, generator)
            # Σ w·ℓ per dataset item: the mean for plain batches; for fine-tuning pairs
            # E ℓ(instance) + λ E ℓ(class), DreamBooth's objective (Ruiz et al. 2023, Eq. 2)
            loss = (losses * weights).sum() / len(batch["index"]) / t.grad_accum
            if micro < t.grad_accum - 1:
                with self.accelerator.no_sync(self.model):
                    self.accelerator.backward(loss)
            else:
                self.accelerator.backward(loss)
            total += float(loss.detach())
            all_t.append(timesteps)
            all_losses.append(raw)
        grad_norm = self._clip_gradients()
        total = float(self.accelerator.reduce(torch.tensor(total, device=self.device), "mean"))
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            return self._on_non_finite(total, grad_norm), grad_norm
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.family.observe(
            self.accelerator.gather(torch.cat(all_t)), self.accelerator.gather(torch.cat(all_losses))
        )
        self.state.step += 1
        self.state.position += self.images_per_step
        self.state.images_seen += self.images_per_step
        if self.state.step % t.ema_every == 0:
            self.ema.step(self.accelerator.unwrap_model(self.model).parameters())
        return total, grad_norm

    def _to_model_input(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the loss sees (pixels in [-1, 1], or latents) and the loss weights (1, or 1 and λ for pairs)."""
        failed = batch["index"][~batch["ok"]]
        self.failed_indices.update(int(i) for i in failed)
        images = batch["image"].flatten(0, -4)  # (B, 2, C, H, W) pairs -> (2B, C, H, W)
        weights = batch["weight"].flatten() if "weight" in batch else torch.ones(len(images))
        images = images.to(self.device, non_blocking=True)
        flip = None
        if self.config.data.flip:
            flip = torch.rand(images.shape[0], generator=generator, device=self.device) < 0.5
        rows = batch["index"] if images_of(self.data) is self.data else None  # fine-tuning pairs: no rows
        x0 = self.family.inputs(images, generator, flip=flip, indices=rows)
        return x0, weights.to(self.device)

    def _clip_gradients(self) -> float:
        params = self.accelerator.unwrap_model(self.model).parameters()
        clip = self.config.train.grad_clip
        norm = self.accelerator.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        return float(norm)

    # --- non-finite guard ---------------------------------------------------------------

    def _on_non_finite(self, loss: float, grad_norm: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        what = f"loss={loss}, grad-norm={grad_norm} at step {self.state.step + 1}"
        latest = self.latest_checkpoint()
        if self.config.train.nan_policy == "rollback" and latest is not None and self.state.rollbacks < 3:
            self._load(latest)
            self.state.rollbacks += 1
            self.state.lr_scale *= 0.5
            self._apply_lr_scale()
            message = f"non-finite {what}; rolled back to {latest.name} with learning rate x{self.state.lr_scale}"
            self._emit({"event": "rollback", "message": message})
            if self.is_main:
                print(message, flush=True)
            return None
        kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint had been written yet"
        message = f"training diverged: non-finite {what}; {kept}. Lower --lr or add --grad-clip."
        self._write_run_status("diverged", message=message)
        self._emit({"event": "diverged", "message": message})
        raise TrainingDiverged(message)

    def _apply_lr_scale(self) -> None:
        self.lr_scheduler.base_lrs = [self.config.train.lr * self.state.lr_scale for _ in self.lr_scheduler.base_lrs]

    # --- validation, previews, logs ---------------------------------------------------------

    @torch.no_grad()
    def _validation_loss(self) -> float:
        model = self.accelerator.unwrap_model(self.model).eval()
        generator = torch.Generator(self.device).manual_seed(self.config.train.seed)
        losses = []
        n = min(len(self.val_data), 512)
        for start in range(0, n, self.config.train.batch_size):
            items = [self.val_data[i] for i in range(start, min(start + self.config.train.batch_size, n))]
            x0 = self.family.inputs(torch.stack([item["image"] for item in items]).to(self.device), generator)
            losses.append(self.family.loss(model, x0, generator)[2].float().cpu())
        return float(torch.cat(losses).mean())

    def _validate_and_check_patience(self) -> bool:
        """Log the validation loss; True when early stopping should end the run."""
        value = self._validation_loss()
        self._append_metrics({"step": self.state.step, "val_loss": value})
        if value < self.state.best_val_loss:
            self.state.best_val_loss, self.state.bad_validations = value, 0
            return False
        self.state.bad_validations += 1
        patience = self.config.train.early_stop_patience
        if patience and self.state.bad_validations >= patience:
            self._emit({"event": "early_stop", "step": self.state.step, "val_loss": value})
            return True
        return False

    def ema_model(self) -> torch.nn.Module:
        """A CPU copy of the network with the current EMA weights."""
        model = self.family.build_model()
        self.ema.copy_to(model.parameters())
        return model

    def ema_pipeline(self) -> Pipeline:
        """A sampling pipeline on the current EMA weights (CPU copy)."""
        info = CheckpointInfo(str(self.run_dir), self.run_dir, "bedgen", self.config.family, self.config)
        return self.family.pipeline(self.ema_model(), info)

    def _preview(self) -> None:
        if not self.is_main or self.config.train.preview_images < 1:
            return
        self._last_preview_step = self.state.step
        images = self.family.preview(self.ema_pipeline(), self.config.train.preview_images, self.device.type)
        path = self.run.preview_path(self.state.step)
        sheet = grid(images)
        sheet.save(path)
        atomic_write(path.with_name(LATEST_PREVIEW), lambda handle: sheet.save(handle, format="PNG"))
        self._emit({"event": "preview", "step": self.state.step, "path": str(path)})

    def _log(self, loss: float, grad_norm: float, images_per_second: float) -> None:
        record = {
            "step": self.state.step, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
            "grad_norm": grad_norm, "img_per_s": images_per_second,
            "ema_decay": float(getattr(self.ema, "cur_decay_value", 0.0) or 0.0),
            "images_seen": self.state.images_seen, "epoch": self.state.position / len(self.data),
            "skipped": len(self.failed_indices), "max_steps": self.max_steps, "time": time.time(),
        }
        self._append_metrics(record)
        self._emit({"event": "log", **record})

    def _append_metrics(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run.metrics_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._tensorboard(record)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time", "max_steps") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None and self.is_main:
            self.on_event(event)

    def _progress_bar(self):
        if not self.show_progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.max_steps, initial=self.state.step, unit="step", desc="training", dynamic_ncols=True)

    def _skipped_message(self) -> str:
        if not self.failed_indices:
            return ""
        keys = sorted(self.data.key(i) for i in self.failed_indices)
        shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
        return f"skipped {len(keys)} unreadable image(s): {shown}"

    # --- FID ------------------------------------------------------------------------------

    def _prepare_fid(self) -> tuple[Any, Any]:
        """The Inception extractor and the reference statistics, or (None, None) without FID.

        Loaded before training so a missing or mismatched reference or weights file stops
        the run at once. A data-source reference is computed once by the main process and
        cached; the others then read the cache (for multi-GPU runs, make it beforehand with
        `bedgen ref-stats`: the others wait meanwhile, within the process group's timeout).
        """
        t = self.config.train
        if t.fid_every <= 0:
            return None, None
        from ..evaluation.metrics import check_request, shared_inception

        inception = shared_inception(t.inception_weights, self.device)
        reference = self._open_fid_reference(inception) if self.is_main else None
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            reference = self._open_fid_reference(inception)  # all shares use the reference's feature layer
        for note in check_request(("fid",), t.fid_samples, reference, self.config.resolution, inception):
            if self.is_main:
                print(f"bedgen: warning: {note}", flush=True)
        return inception, reference

    def _open_fid_reference(self, inception: Any) -> Any:
        from ..evaluation.metrics import open_reference

        t, data = self.config.train, self.config.data
        same_data = (t.fid_ref or "").strip() == data.source.strip()
        return open_reference(
            t.fid_ref, self.config.resolution, data.square, inception, batch_size=t.fid_batch_size,
            image_column=data.image_column if same_data else None,
            progress=lambda done, total, stage: self._emit({"event": "fid_reference", "done": done, "total": total}),
        )

    def _fid_pending(self) -> bool:
        """FID is on and the current step has none yet."""
        return self.fid_inception is not None and self._fid_step != self.state.step

    def _measure_fid(self) -> None:
        """FID of the EMA weights; every process generates its share, the main one logs it."""
        from ..evaluation.metrics import fid_of_features, make_result, sample_features, shard

        t = self.config.train
        start = time.perf_counter()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        pipe = self.ema_pipeline()
        mine = sample_features(pipe, shard(t.fid_samples, rank, world), t.seed, self.fid_inception,
                               layer=self.fid_reference.layer, batch_size=t.fid_batch_size, device=self.device.type)
        features = self._gather_rows(mine.features, t.fid_samples)
        self._fid_step = self.state.step
        if not self.is_main:
            return
        fid = fid_of_features(features, self.fid_reference)
        seconds = {"sampling": round(mine.sampling_seconds, 2), "features": round(mine.feature_seconds, 2),
                   "total": round(time.perf_counter() - start, 2)}
        result = make_result(pipe, t.fid_samples, t.seed, mine, self.fid_reference, self.fid_inception,
                             {"fid": fid, "settings": {"feature_layer": self.fid_reference.layer}}, seconds, [],
                             checkpoint_step=self.state.step)
        self._fid_result = result
        best = fid < self.state.best_fid
        if best:
            self.state.best_fid, self.state.best_fid_step = fid, self.state.step
            self._save_best_fid(result)
        record = {
            "step": self.state.step, "fid": fid, "fid_samples": t.fid_samples,
            "best_fid": self.state.best_fid, "best_fid_step": self.state.best_fid_step,
            "reference": result["reference"]["path"] or t.fid_ref, "sampler": mine.sampler, "steps": mine.steps,
            "seconds": seconds["total"], "time": time.time(),
        }
        self._append_metrics(record)
        self._emit({"event": "fid", **record, "best": best})

    def _gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Every process's share of rows in rank order (shares differ in length by at most one)."""
        from ..evaluation.metrics import shard

        world = self.accelerator.num_processes
        if world == 1:
            return rows
        width = -(-total // world)
        padded = torch.zeros(width, rows.shape[1], dtype=rows.dtype)
        padded[: len(rows)] = rows
        gathered = self.accelerator.gather(padded.to(self.device)).cpu()
        return torch.cat([gathered[r * width : r * width + len(shard(total, r, world))] for r in range(world)])

    def _save_best_fid(self, result: dict[str, Any]) -> None:
        """RUN/best-fid: a loadable checkpoint (no training state), swapped in atomically."""
        metadata = {
            "training": {**asdict(self.state), "max_steps": self.max_steps},
            "data": self.data.describe(),
            "metrics": [result],
        }
        # a fresh EMA copy: sampling left the pipeline's one channels-last on the device
        self.family.write_checkpoint(self.run_dir / BEST_FID_DIR, self.ema_model(), self.config, metadata)
        self.run.update_state(best_fid={"fid": result["fid"], "step": self.state.step, "checkpoint": BEST_FID_DIR})

    def _metrics_of_this_step(self) -> list[dict[str, Any]]:
        """The FID result measured at the current step, for the checkpoint's bedgen.json."""
        if self._fid_result is not None and self._fid_step == self.state.step:
            return [self._fid_result]
        return []

    # --- checkpoints --------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """``cpu/fp32: this CPU has no native bf16 (AVX2 only)``: the compute path, and why it was picked."""
        mode = self.accelerator.mixed_precision
        return f"{self.device.type}/{'fp32' if mode == 'no' else mode}: {self.precision_reason}"

    def latest_checkpoint(self) -> Path | None:
        return self.run.latest_checkpoint()

    @staticmethod
    def _step_of(checkpoint: Path | None) -> int:
        return -1 if checkpoint is None else int(checkpoint.name.split("-")[-1])

    def save(self) -> Path:
        """Write checkpoints/step-N atomically, point the run at it, prune old ones."""
        path = self.run.checkpoint_path(self.state.step)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            metadata = {
                "training": {**asdict(self.state), "max_steps": self.max_steps,
                             "skipped_images": len(self.failed_indices)},
                "data": self.data.describe(),
                "metrics": self._metrics_of_this_step(),
            }
            try:
                self.family.write_checkpoint(path, self.ema_model(), self.config, metadata,
                                             extra=self._write_training_state)
            except (OSError, SafetensorError) as e:  # the half-written copy is gone; the previous one stays
                raise self._write_failed(path, e) from e
            self._write_run_status("running", latest=path)
            self._prune_checkpoints()
            self._emit({"event": "checkpoint", "step": self.state.step, "path": str(path)})
        self.accelerator.wait_for_everyone()
        return path

    def _write_failed(self, path: Path | None, error: Exception) -> CheckpointWriteError:
        import errno

        # safetensors reports I/O errors as SafetensorError("... (os error 28)"), without an errno
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            mark in str(error) for mark in (f"os error {errno.ENOSPC})", f"os error {errno.EDQUOT})"))
        latest = self.latest_checkpoint()
        kept = (f"the previous checkpoint {latest.relative_to(self.run_dir)} is kept and loadable"
                if latest is not None else "no earlier checkpoint exists")
        what = f"checkpoint {path.name}" if path is not None else f"to the run folder {self.run_dir}"
        message = (f"could not write {what}: {getattr(error, 'strerror', None) or one_line(error)}"
                   f"{' (the disk is full)' if full else ''}; {kept}. "
                   f"{'Free some space, then' if full else 'Fix the cause, then'} resume with --resume.")
        try:
            self._write_run_status("failed", message=message)
        except OSError:
            pass  # the status file may not fit either; the exception still carries the message
        self._emit({"event": "failed", "message": message})
        return CheckpointWriteError(message)

    def _write_training_state(self, checkpoint_dir: Path) -> None:
        folder = checkpoint_dir / STATE_DIR
        folder.mkdir()
        raw = self.accelerator.unwrap_model(self.model).state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in raw.items()}, str(folder / "raw_unet.safetensors"))
        optimizer = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        save_state(optimizer.state_dict(), folder, "optimizer")
        save_state(self.family.state_dict(), folder, "family")
        ema = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        trainer = {"state": asdict(self.state), "lr_scheduler": self.lr_scheduler.state_dict(),
                   "ema": ema, "failed_indices": sorted(self.failed_indices),
                   "world_size": self.accelerator.num_processes}
        (folder / "trainer.json").write_text(json.dumps(trainer, indent=1))

    def _load(self, checkpoint: Path) -> None:
        folder = checkpoint / STATE_DIR
        if not folder.is_dir():
            raise BedgenError(f"{checkpoint} has no {STATE_DIR}/ and cannot be resumed")
        model = self.accelerator.unwrap_model(self.model)
        model.load_state_dict(load_file(str(folder / "raw_unet.safetensors")))
        ema_weights = load_file(str(checkpoint / self.family.network_folder / "diffusion_pytorch_model.safetensors"))
        names = [name for name, _ in model.named_parameters()]
        trainer = json.loads((folder / "trainer.json").read_text())
        self.ema.load_state_dict({**trainer["ema"], "shadow_params": [ema_weights[n].to(self.device) for n in names]})
        optimizer = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        optimizer.load_state_dict(load_state(folder, "optimizer"))
        self.family.load_state_dict(load_state(folder, "family"))
        self.lr_scheduler.load_state_dict(trainer["lr_scheduler"])
        self.state = TrainState(**trainer["state"])
        self.failed_indices = set(trainer.get("failed_indices", []))
        self._apply_lr_scale()

    def _prune_checkpoints(self) -> None:
        keep = self.config.train.keep_checkpoints
        folder = self.run.checkpoints
        for leftover in folder.glob(".step-*.pruned"):  # a deletion a killed run did not finish
            shutil.rmtree(leftover, ignore_errors=True)
        for old in sorted(folder.glob("step-*"))[:-keep]:
            # Hidden by one rename first: a kill during the deletion leaves no visible half checkpoint.
            doomed = old.with_name(f".{old.name}.pruned")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def _write_run_status(self, status: str, latest: Path | None = None, message: str = "") -> None:
        if not self.is_main:
            return
        changes = {} if latest is None else {"latest": str(latest.relative_to(self.run_dir))}
        self.run.update_state(
            **changes, status=status, step=self.state.step, max_steps=self.max_steps, pid=os.getpid(),
            message=message, updated=time.time(), config=self.config.to_dict(), precision=self.precision,
        )

    # --- signals ------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signals are only delivered to the main thread

        def request_stop(signum, frame):
            self.stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint and return from :meth:`train`."""
        self.stop_requested = True
