"""``bedgen distill``: the config of a consistency student of a teacher; the one trainer runs it.

The student inherits what the teacher was trained with (resolution, data squaring, flips,
optimiser, EMA), so ``bedgen distill --teacher RUN --data SAME_DATA`` needs no other flag;
a teacher without a bedgen.json (a Hub DDPM) gets the tiny preset's training settings at
its own resolution. What changes is the family, the distillation section and the schedule
of the run: a fixed learning rate, as in Song et al. 2023 (App. C), and fewer steps.
"""

from __future__ import annotations

import copy

from ..config.schema import BedgenConfig, preset
from ..core.errors import BedgenError

DEFAULT_STEPS = 2000
# The paper used 1e-5 for LSUN 256 at batch 256 over 600k steps (App. C). For the short runs of small
# models bedgen makes on a CPU, 1e-4 distilled clearly better students than 2e-5 (and than 5e-4 on
# the pixel statistics) in 300 steps of bench/quality_speed.py's 32 px teacher (bench/RESULTS.md).
DEFAULT_LR = 1e-4


def distill_config(teacher: str) -> BedgenConfig:
    """The student's config before the command line's flags: the teacher's, made a consistency run."""
    from ..sampling.pipeline import Pipeline
    from ..sampling.schedulers import CONSISTENCY_STEPS

    if not str(teacher or "").strip():
        raise BedgenError("give --teacher: the diffusion model to distil (a run folder, checkpoint or Hub DDPM)")
    pipe = Pipeline.from_ref(teacher)
    if pipe.info.family not in ("ddpm", "iddpm", "ldm"):
        raise BedgenError(f"'{teacher}' is a {pipe.info.family} model; distil a ddpm, iddpm or ldm model")
    config = copy.deepcopy(pipe.info.config) if pipe.info.config is not None else preset("tiny")
    config.family, config.preset, config.resolution = "consistency", f"consistency-of-{config.preset}", pipe.resolution
    config.in_channels = int(pipe.unet.config.in_channels)
    config.distill.teacher = teacher
    config.finetune = type(config.finetune)()
    config.latent.cache = False  # the teacher's own first stage encodes (bedgen.families.consistency)
    config.sampling.scheduler, config.sampling.steps = "consistency", CONSISTENCY_STEPS
    t = config.train
    t.max_steps, t.epochs, t.lr, t.lr_schedule = DEFAULT_STEPS, None, DEFAULT_LR, "constant"
    t.warmup_steps = 0
    t.validate_every, t.early_stop_patience = 0, 0
    return config


__all__ = ["distill_config", "DEFAULT_STEPS", "DEFAULT_LR"]
