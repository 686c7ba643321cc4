"""Model families: each supplies a network, its training schedule and a per-sample loss.

The trainer owns everything else (optimisation, EMA, checkpoints, logging), so a
family is small and every family trains through the same loop.
"""

from __future__ import annotations

from ..config.schema import BedgenConfig
from ..core.errors import BedgenError
from .consistency import ConsistencyDistillationFamily
from .ddpm import DiffusionFamily
from .ldm import LatentDiffusionFamily
from .progressive import ProgressiveDistillationFamily
from .smld import ScoreFamily
from .vae import AutoencoderFamily

Family = (DiffusionFamily | ScoreFamily | AutoencoderFamily | ConsistencyDistillationFamily
          | ProgressiveDistillationFamily)
FAMILIES: dict[str, type[Family]] = {
    "ddpm": DiffusionFamily, "iddpm": DiffusionFamily, "ldm": LatentDiffusionFamily, "smld": ScoreFamily,
    "vae": AutoencoderFamily, "consistency": ConsistencyDistillationFamily,
    "progressive": ProgressiveDistillationFamily,
}


def get_family(config: BedgenConfig) -> Family:
    if config.family not in FAMILIES:
        raise BedgenError(
            f"family '{config.family}' cannot be trained yet; trainable: {', '.join(FAMILIES)}"
        )
    return FAMILIES[config.family](config)


__all__ = [
    "AutoencoderFamily", "ConsistencyDistillationFamily", "DiffusionFamily", "FAMILIES", "Family", "LatentDiffusionFamily",
    "ProgressiveDistillationFamily", "ScoreFamily",
    "get_family",
]
