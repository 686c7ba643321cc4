"""``bedgen distill``: the config of a few-step student of a teacher; the one trainer runs it.

Two methods, each a family: ``consistency`` (Song et al. 2023; bedgen.families.consistency) and
``progressive`` (Salimans & Ho 2022; bedgen.families.progressive).

The student inherits what the teacher was trained with (resolution, data squaring, flips,
optimiser, EMA), so ``bedgen distill --teacher RUN --data SAME_DATA`` needs no other flag;
a teacher without a bedgen.json (a Hub DDPM) gets the tiny preset's training settings at
its own resolution. What changes is the family, the distillation section and the schedule
of the run: a fixed learning rate, as in Song et al. 2023 (App. C), and fewer steps.
"""

from __future__ import annotations

import copy

from ..config.schema import DISTILL_METHODS, BedgenConfig, preset
from ..core.errors import BedgenError

DEFAULT_STEPS = 2000
# The paper used 1e-5 for LSUN 256 at batch 256 over 600k steps (App. C). For the short runs of small
# models bedgen makes on a CPU, 1e-4 distilled clearly better students than 2e-5 (and than 5e-4 on
# the pixel statistics) in 300 steps of bench/quality_speed.py's 32 px teacher (bench/RESULTS.md).
DEFAULT_LR = 1e-4


def distill_config(teacher: str, method: str = "consistency") -> BedgenConfig:
    """The student's config before the command line's flags: the teacher's, made a ``method`` run."""
    from ..sampling.pipeline import Pipeline
    from ..sampling.schedulers import CONSISTENCY_STEPS

    if method not in DISTILL_METHODS:
        raise BedgenError(f"unknown distillation method '{method}'; choose one of {', '.join(DISTILL_METHODS)}")
    if not str(teacher or "").strip():
        raise BedgenError("give --teacher: the diffusion model to distil (a run folder, checkpoint or Hub DDPM)")
    pipe = Pipeline.from_ref(teacher)
    if pipe.info.family not in ("ddpm", "iddpm", "ldm"):
        raise BedgenError(f"'{teacher}' is a {pipe.info.family} model; distil a ddpm, iddpm or ldm model")
    config = copy.deepcopy(pipe.info.config) if pipe.info.config is not None else preset("tiny")
    config.family, config.preset, config.resolution = method, f"{method}-of-{config.preset}", pipe.resolution
    config.in_channels = int(pipe.unet.config.in_channels)
    config.distill.teacher, config.distill.method = teacher, method
    config.finetune = type(config.finetune)()
    config.latent.cache = False  # the teacher's own first stage encodes (bedgen.families.teacher)
    t = config.train
    t.max_steps, t.epochs, t.lr, t.lr_schedule = DEFAULT_STEPS, None, DEFAULT_LR, "constant"
    t.warmup_steps = 0
    t.validate_every, t.early_stop_patience = 0, 0
    if method == "consistency":
        config.sampling.scheduler, config.sampling.steps = "consistency", CONSISTENCY_STEPS
    else:
        # DDIM steps (the family sets them to distill.final_steps); the raw weights are saved, since one
        # EMA over the run would mix the stages' students (bedgen.families.progressive); DDIM reads no
        # learned variance, and the student has none (its network keeps the ε/v half only).
        config.sampling.scheduler, config.sampling.steps = "ddim", config.distill.final_steps
        t.ema_decay = 0.0
        config.diffusion.variance_type, config.diffusion.loss_type = "fixed_small", "mse"
    return config


__all__ = ["distill_config", "DEFAULT_STEPS", "DEFAULT_LR"]
