"""Subject fine-tuning with prior preservation (`bedgen finetune`), end to end on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bedgen.cli.main import main
from bedgen.config.overrides import override
from bedgen.core.errors import BedgenError
from bedgen.data.training_data import PriorPreservationDataset, open_training_data
from bedgen.training.finetune import (
    CLASS_SEED, FinetuneRequest, _runs, finetune_config, mean_pairwise_distance, nearest_distance, run_finetune,
    source_config,
)
from bedgen.sampling.pipeline import load
from bedgen.training.trainer import Trainer
from conftest import (
    make_tiny_checkpoint, make_tiny_ldm_checkpoint, make_tiny_score_checkpoint, make_tiny_vae_checkpoint,
    save_random_backbone,
)
from synthetic import write_rooms


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def source(root) -> Path:
    """A 32 px model: LPIPS's AlexNet needs at least 31 px."""
    return make_tiny_checkpoint(root / "source", resolution=32)


@pytest.fixture(scope="module")
def instances(root) -> Path:
    write_rooms(root / "instances", 3, size=48, seed=7)
    return root / "instances"


@pytest.fixture(scope="module")
def alex(root) -> Path:
    return save_random_backbone(root / "alexnet-random.safetensors")


@pytest.fixture(scope="module")
def with_prior(root, source, instances, alex):
    out = root / "with-prior"
    code = main(["finetune", "--model", str(source), "--instance-data", str(instances), "--out", str(out),
                 "--num-class-images", "6", "--steps", "4", "--batch-size", "2", "--report-samples", "4",
                 "--lpips-weights", str(alex)])
    assert code == 0
    return out


def _check_report(report: dict, instances: int) -> None:
    assert report["kind"] == "finetune" and report["instances"] == instances and report["samples"] == 4
    for model in ("source", "finetuned"):
        for number in ("lpips_to_nearest_instance", "mean_pairwise_lpips"):
            value = report[model][number]
            assert math.isfinite(value) and value > 0, (model, number, value)


def test_with_prior_preservation_runs_end_to_end_and_reports_both_numbers(with_prior, source):
    report = json.loads((with_prior / "finetune-report.json").read_text())
    _check_report(report, instances=3)
    assert report["prior_weight"] == 1.0 and report["class_images"] == 6 and report["steps"] == 4
    # the report also lands in the fine-tuned checkpoint, next to its config
    pipe = load(str(with_prior))
    assert pipe.info.metadata["metrics"][-1] == report
    assert pipe.info.config.finetune.init_from == str(source)
    assert pipe.info.metadata["data"]["kind"] == "prior-preservation"
    assert (with_prior / "finetune-report" / "source.png").is_file()
    assert (with_prior / "finetune-report" / "finetuned.png").is_file()


def test_class_images_are_the_source_models_seeded_samples(with_prior, source):
    files = sorted((with_prior / "class-images").glob("*.png"))
    assert [f.name for f in files] == [f"class-{i:05d}.png" for i in range(6)]
    expected = load(str(source)).generate(6, seed=CLASS_SEED)
    for file, image in zip(files, expected):
        assert np.array_equal(np.asarray(Image.open(file)), np.asarray(image)), file.name


def test_fine_tuned_model_samples_with_a_seed_and_is_listed(with_prior):
    from bedgen.storage.registry import local_models

    pipe = load(str(with_prior))
    a, b = pipe.generate(2, seed=5), pipe.generate(2, seed=5)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert str(with_prior) in {e.ref for e in local_models(with_prior.parent)}


def test_without_prior_preservation(root, source, instances, alex):
    out = root / "no-prior"
    report = run_finetune(FinetuneRequest(
        model=str(source), instance_data=str(instances), out=out, prior_weight=0.0, steps=3, batch_size=2,
        report_samples=4, lpips_weights=str(alex)), progress=False)
    _check_report(report, instances=3)
    assert report["class_images"] == 0 and report["class_data"] is None
    assert not (out / "class-images").exists()  # nothing sampled when λ = 0
    assert load(str(out)).info.metadata["data"]["kind"] == "folder"


def test_class_data_folder_is_used_as_given(root, source, instances):
    classes = root / "given-classes"
    write_rooms(classes, 5, size=40, seed=99)
    out = root / "given"
    assert run_finetune(FinetuneRequest(
        model=str(source), instance_data=str(instances), out=out, class_data=str(classes), steps=2, batch_size=2,
        report=False), progress=False) == {}
    data = load(str(out)).info.metadata["data"]
    assert data["classes"]["images"] == 5 and data["classes"]["source"] == str(classes.resolve())
    assert not (out / "class-images").exists()


def test_training_starts_from_the_source_weights(root, source, instances):
    request = FinetuneRequest(model=str(source), instance_data=str(instances), out=root / "init", steps=2)
    config = finetune_config(request, source_config(str(source)), class_data=None)
    trainer = Trainer(config, root / "init", progress=False)
    loaded = load(str(source)).unet.state_dict()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, loaded[name]), name
    ema = trainer.ema_model().state_dict()
    assert all(torch.equal(ema[n], loaded[n]) for n in loaded)  # the EMA starts there too


def test_pairs_carry_their_loss_weights_through_the_trainer(root, source):
    """Each instance image gets weight 1 and each class image λ, in the order the loss sees them."""
    white, black = root / "white", root / "black"
    for folder, colour in ((white, "white"), (black, "black")):
        folder.mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
    request = FinetuneRequest(model=str(source), instance_data=str(white), out=root / "pairs", steps=2,
                              batch_size=3, prior_weight=0.25)
    config = finetune_config(request, source_config(str(source)), class_data=str(black))
    data = open_training_data(config)
    assert isinstance(data, PriorPreservationDataset) and len(data) == 3
    trainer = Trainer(config, root / "pairs", progress=False)
    batch = next(trainer._batches())
    x0, weights = trainer._to_model_input(batch, torch.Generator().manual_seed(0))
    assert x0.shape == (6, 3, 32, 32) and weights.tolist() == [1.0, 0.25] * 3
    assert torch.all(x0[weights == 1] == 1) and torch.all(x0[weights == 0.25] == -1)


def _denoising_loss(ref: str, folder: Path, t: int = 10) -> float:
    """The model's ε-MSE on a folder's images at a low noise level (where the images, not
    the noise, decide the loss), fixed noise."""
    from bedgen.data.datasets import DataConfig, open_dataset

    pipe = load(ref)
    images = open_dataset(DataConfig(source=str(folder)), pipe.info.config.resolution)
    x0 = torch.stack([images[i]["image"] for i in range(len(images))]).float().repeat(8, 1, 1, 1) / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    timesteps = torch.full((len(x0),), t)
    with torch.no_grad():
        xt = pipe.training_scheduler.add_noise(x0, noise, timesteps)
        return float((pipe.unet.float()(xt, timesteps).sample - noise).pow(2).mean())


def test_prior_term_keeps_the_model_on_its_class_images(root, source):
    """Both runs fit the instances; only the one with the prior term also fits the class images."""
    subject, classes = root / "subject", root / "class-rooms"
    write_rooms(subject, 2, size=32, seed=3)
    for path in write_rooms(classes, 8, size=32, seed=11):  # unlike the subject: upside down, inverted
        ImageOps.invert(ImageOps.flip(Image.open(path))).save(path)
    runs = {}
    for weight in (0.0, 1.0):
        out = root / f"prior-{weight}"
        run_finetune(FinetuneRequest(model=str(source), instance_data=str(subject), out=out, prior_weight=weight,
                                     class_data=str(classes), steps=150, lr=2e-3, batch_size=4, report=False),
                     progress=False)
        runs[weight] = str(out)
    before = _denoising_loss(str(source), subject)
    for ref in runs.values():
        assert _denoising_loss(ref, subject) < 0.5 * before, ref
    assert _denoising_loss(runs[1.0], classes) < 0.85 * _denoising_loss(runs[0.0], classes)  # measured 0.77x


@pytest.mark.parametrize("make", [make_tiny_ldm_checkpoint, make_tiny_score_checkpoint, make_tiny_vae_checkpoint],
                         ids=["ldm", "smld", "vae"])
def test_other_families_fine_tune_through_the_same_command(make, root, tmp_path):
    source = make(tmp_path / "source")
    rooms = tmp_path / "rooms"
    write_rooms(rooms, 2, size=24)
    out = tmp_path / "run"
    code = main(["finetune", "--model", str(source), "--instance-data", str(rooms), "--out", str(out),
                 "--num-class-images", "2", "--steps", "2", "--batch-size", "2", "--no-report"])
    assert code == 0
    pipe = load(str(out))
    assert pipe.info.config.finetune.init_from == str(source)
    assert len(pipe.generate(1, seed=0)) == 1


def test_zero_instance_images_fail_before_anything_is_written(root, source, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    code = main(["finetune", "--model", str(source), "--instance-data", str(empty), "--out", str(out),
                 "--no-report"])
    assert code == 2
    err = capsys.readouterr().err
    assert "fine-tuning needs at least one instance image" in err and "no images found" in err
    assert not out.exists()


def test_bad_requests_are_refused_with_a_reason(root, source, instances, with_prior, tmp_path, capsys):
    cases = [
        (["--model", str(source), "--out", str(tmp_path / "a")], "--instance-data are required"),
        (["--model", str(with_prior), "--instance-data", str(instances), "--out", str(with_prior), "--no-report"],
         "already holds a run"),
        (["--model", str(tmp_path / "missing"), "--instance-data", str(instances), "--out", str(tmp_path / "b"),
          "--no-report"], "missing"),
        (["--model", str(source), "--instance-data", str(instances), "--out", str(tmp_path / "c"),
          "--lpips-weights", str(tmp_path / "nope.pth")], "nope.pth"),
        (["--model", str(source), "--instance-data", str(instances), "--out", str(tmp_path / "d"),
          "--report-samples", "1"], "at least 2"),
    ]
    for args, message in cases:
        assert main(["finetune", *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_negative_prior_weight_is_a_usage_error(source, instances, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--model", str(source), "--instance-data", str(instances), "--out", str(tmp_path),
              "--prior-weight", "-1"])
    assert exit_info.value.code == 2


def test_prior_weight_is_validated_in_the_config(source):
    with pytest.raises(BedgenError, match="prior_weight"):
        override(source_config(str(source)), {"finetune.prior_weight": -0.5})


def test_resume_continues_a_killed_fine_tuning_run(root, source, instances):
    out = root / "resumable"
    request = FinetuneRequest(model=str(source), instance_data=str(instances), out=out, num_class_images=4,
                              steps=6, batch_size=2, report=False)
    config = finetune_config(request, source_config(str(source)), class_data=None)
    config.train.checkpoint_every = 2
    first = Trainer(config, out, progress=False)
    first.max_steps = 2  # stands in for a run killed after its first checkpoint
    first.train()
    assert run_finetune(FinetuneRequest(model="", instance_data="", out=out, report=False), resume=True,
                        progress=False) == {}
    assert load(str(out)).info.metadata["training"]["step"] == 6


def test_lpips_summaries_by_hand():
    samples = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    instances = torch.tensor([[1.0, 0.0]])
    # squared distances to the one instance: 1, 4, 17
    assert nearest_distance(samples, instances) == pytest.approx((1 + 4 + 17) / 3)
    # pairs: (0,1) 9, (0,2) 16, (1,2) 25
    assert mean_pairwise_distance(samples) == pytest.approx((9 + 16 + 25) / 3)
    assert _runs([0, 1, 2, 5, 6, 9], longest=2) == [(0, 2), (2, 1), (5, 2), (9, 1)]
