"""The data the trainer reads: a source's images, or (instance, class image) pairs when fine-tuning.

Prior preservation (DreamBooth, Ruiz et al. 2023, Eq. 2, without the prompt) trains on pairs
with loss weights (1, λ); bedgen.training.finetune prepares the class images.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..config.schema import BedgenConfig, DataConfig
from .datasets import ImageDataset, open_dataset


class PriorPreservationDataset(torch.utils.data.Dataset):
    """Item i = (instance i mod K, class image i mod M) with loss weights (1, λ).

    Its length is max(K, M), so an epoch shows every class image once and the few
    instances many times; each batch holds as many class images as instances.
    """

    def __init__(self, instances: ImageDataset, classes: ImageDataset, prior_weight: float):
        self.instances, self.classes = instances, classes
        self.weights = torch.tensor([1.0, float(prior_weight)])

    def __len__(self) -> int:
        return max(len(self.instances), len(self.classes))

    def key(self, i: int) -> str:
        return self.instances.key(i % len(self.instances))

    def __getitem__(self, i: int) -> dict[str, Any]:
        instance = self.instances[int(i) % len(self.instances)]
        prior = self.classes[int(i) % len(self.classes)]
        return {
            "image": torch.stack([instance["image"], prior["image"]]),
            "weight": self.weights,
            "index": int(i),
            "ok": bool(instance["ok"] and prior["ok"]),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "prior-preservation", "images": len(self), "prior_weight": float(self.weights[1]),
            "instances": self.instances.describe(), "classes": self.classes.describe(),
        }


def open_training_data(config: BedgenConfig) -> ImageDataset | PriorPreservationDataset:
    """The trainer's data: the source images, or instance/class pairs when fine-tuning with a prior."""
    data = open_dataset(config.data, config.resolution, "train")
    class_data = config.finetune.class_data
    if not class_data or config.finetune.prior_weight == 0:
        return data
    classes = open_dataset(class_data_config(config.data, class_data), config.resolution, "train")
    return PriorPreservationDataset(data, classes, config.finetune.prior_weight)


def class_data_config(instance: DataConfig, source: str) -> DataConfig:
    """Class images are read like the instances but all of them, none held out."""
    config = copy.deepcopy(instance)
    config.source, config.fraction, config.validation_fraction = source, 1.0, 0.0
    return config


def images_of(data: ImageDataset | PriorPreservationDataset) -> ImageDataset:
    """The images a family measures itself on (e.g. σ_max): the instances when fine-tuning."""
    return data.instances if isinstance(data, PriorPreservationDataset) else data
