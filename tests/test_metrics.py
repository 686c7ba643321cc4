"""FID / KID / IS / precision-recall: equal to torch-fidelity's own numbers, reference
statistics, bedgen eval, in-training FID, and the errors users can run into.

Inception has random weights written by ``save_random_inception`` in torch-fidelity's
format and read by torch-fidelity's own loader. Most tests use its 64-d layer (cheap,
and FID's 64 x 64 matrix square root is instant); the comparison with
``torch_fidelity.calculate_metrics`` uses the standard 2048-d pool3 layer.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import bedgen
from bedgen.cli.main import main
from bedgen.core.errors import BedgenError
from bedgen.evaluation.metrics import (
    ReferenceStats, _FeatureStats, compute_reference_stats, evaluate, frechet_distance, shard,
)

from conftest import make_tiny_checkpoint, save_random_inception
from synthetic import write_rooms

SIZE = 16  # the tiny checkpoints' resolution


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def weights(root):
    return save_random_inception(root / "inception-random.pth")


@pytest.fixture(scope="module")
def rooms(root):
    write_rooms(root / "rooms", 16, size=SIZE, seed=1)
    return root / "rooms"


@pytest.fixture(scope="module")
def noise(root):
    rng = np.random.default_rng(0)
    folder = root / "noise"
    folder.mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def stats64(root, rooms, weights):
    stats = compute_reference_stats(str(rooms), SIZE, inception_weights=weights, feature_layer="64", batch_size=8)
    return stats.save(root / "rooms-64.npz")


@pytest.fixture(scope="module")
def model(root):
    return make_tiny_checkpoint(root / "tiny")


def run_cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the numbers --------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero_and_of_different_sets_is_not(rooms, noise, weights, stats64):
    again = compute_reference_stats(str(rooms), SIZE, inception_weights=weights, feature_layer="64", batch_size=5)
    other = compute_reference_stats(str(noise), SIZE, inception_weights=weights, feature_layer="64", batch_size=8)
    cached = ReferenceStats.load(stats64)
    same = frechet_distance(cached, again)
    different = frechet_distance(cached, other)
    assert abs(same) < 1e-6
    assert different > 1.0 and different > 1e6 * abs(same)
    assert frechet_distance(other, cached) == pytest.approx(different, rel=1e-6)


@pytest.mark.slow
def test_eval_equals_torch_fidelity_on_the_same_images(root, rooms, weights, model, capsys):
    """Reference statistics cached by bedgen ref-stats + samples streamed into Inception give
    torch-fidelity's FID, KID, IS and precision/recall for the two image folders."""
    import torch_fidelity

    stats = root / "rooms-2048.npz"
    code, out, err = run_cli(capsys, "ref-stats", "--data", rooms, "--resolution", SIZE, "--out", stats,
                             "--inception-weights", weights, "--batch-size", 8)
    assert code == 0, err
    assert "wrote statistics of 16 images at 16 px" in out
    pipe = bedgen.load(str(model))
    result = evaluate(pipe, stats, num_samples=12, metrics="fid,kid,is,pr", steps=4, seed=3, batch_size=5,
                      inception_weights=weights, dtype="fp32")
    # The same 12 images as PNG files (in one batch: image i of seed s does not depend on it).
    samples = root / "samples"
    samples.mkdir()
    for i, image in enumerate(pipe.generate(12, seed=3, steps=4, batch_size=12, dtype="fp32")):
        image.save(samples / f"{i:06d}.png")
    theirs = torch_fidelity.calculate_metrics(
        input1=str(samples), input2=str(rooms), cuda=False, fid=True, kid=True, isc=True, prc=True,
        feature_extractor="inception-v3-compat", feature_layer_prc="2048",
        feature_extractor_weights_path=str(weights), kid_subset_size=12, batch_size=5,
        save_cpu_ram=True, cache=False, verbose=False,
    )
    assert result["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6, abs=1e-9)
    assert result["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6, abs=1e-9)
    assert result["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-5, abs=1e-9)
    assert result["is"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
    assert result["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-5, abs=1e-9)
    assert (result["precision"], result["recall"]) == (theirs["precision"], theirs["recall"])
    assert result["fid"] > 0
    assert result["settings"]["kid_subset_size"] == 12 and result["settings"]["feature_layer"] == "2048"


def test_streamed_statistics_equal_torch_fidelitys():
    """Above EXACT_STATS_LIMIT features, μ and Σ are accumulated batch by batch."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    features = torch.randn(300, 64) * 3 + 5
    streamed = _FeatureStats(64, 300, np.array([7, 150]), exact_limit=0)
    for batch in features.split(37):
        streamed.add(batch)
    mu, sigma, kept = streamed.finish()
    expected = fid_features_to_statistics(features)
    assert np.allclose(mu, expected["mu"], rtol=1e-6, atol=1e-6)
    assert np.allclose(sigma, expected["sigma"], rtol=1e-9, atol=1e-9)
    assert np.array_equal(kept, features[[7, 150]].numpy())


def test_shares_of_samples_cover_every_index_once():
    for count, world in [(10, 3), (2, 4), (16, 1)]:
        shares = [shard(count, rank, world) for rank in range(world)]
        assert [i for share in shares for i in share] == list(range(count))


# --- references ---------------------------------------------------------------------------


def test_statistics_file_records_how_it_was_made(stats64, rooms, weights):
    stats = ReferenceStats.load(stats64)
    meta = stats.meta
    assert stats.mu.shape == (64,) and stats.sigma.shape == (64, 64) and stats.features.shape == (16, 64)
    assert meta["resolution"] == SIZE and meta["square"] == "crop" and meta["count"] == 16
    assert meta["source"] == str(rooms) and meta["kind"] == "folder"
    assert meta["jpeg"] is False and meta["formats"] == {"PNG": 16}
    assert meta["feature_layer"] == "64" and meta["inception"]["weights"] == str(weights)
    assert len(meta["inception"]["sha256"]) == 64 and meta["inception"]["standard"] is False
    with np.load(stats64, allow_pickle=False) as npz:  # nothing in it needs pickle
        assert sorted(npz.files) == ["features", "meta", "mu", "sigma"]


def test_jpeg_sources_are_recorded(root, weights):
    write_rooms(root / "jpegs", 4, size=SIZE, seed=5, ext="jpg")
    stats = compute_reference_stats(str(root / "jpegs"), SIZE, inception_weights=weights, feature_layer="64")
    assert stats.meta["jpeg"] is True and stats.meta["formats"] == {"JPEG": 4}


def test_adm_style_reference_is_accepted_for_fid(root, stats64, model, weights):
    ours = ReferenceStats.load(stats64)
    adm = root / "VIRTUAL_rooms16.npz"
    np.savez(adm, mu=ours.mu.astype(np.float64), sigma=ours.sigma, arr_0=np.zeros((2, SIZE, SIZE, 3), np.uint8))
    loaded = ReferenceStats.load(adm)
    assert loaded.resolution == SIZE and loaded.meta["count"] == 2 and not loaded.has_features
    assert frechet_distance(loaded, ours) == pytest.approx(0, abs=1e-6)
    pipe = bedgen.load(str(model))
    result = evaluate(pipe, adm, num_samples=4, metrics="fid", steps=2, inception_weights=weights, batch_size=4)
    assert result["reference"]["format"] == "mu-sigma" and result["reference"]["resolution"] == SIZE
    assert result["fid"] > 0 and "kid" not in result
    assert any("records no Inception weights" in note for note in result["warnings"])


def test_eval_against_a_data_source_caches_its_statistics(rooms, model, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("BEDGEN_CACHE", str(tmp_path / "cache"))
    pipe = bedgen.load(str(model))
    first = evaluate(pipe, str(rooms), num_samples=4, metrics="kid", steps=2, inception_weights=weights, batch_size=4)
    cached = list((tmp_path / "cache" / "reference-stats").glob("*.npz"))
    assert len(cached) == 1 and cached[0].name.startswith(f"rooms-{SIZE}px-crop-")
    assert first["reference"]["path"] == str(cached[0]) and first["reference"]["feature_layer"] == "2048"
    stamp = cached[0].stat().st_mtime_ns
    second = evaluate(pipe, str(rooms), num_samples=4, metrics="kid", steps=2, inception_weights=weights, batch_size=4)
    assert cached[0].stat().st_mtime_ns == stamp  # read from the cache, not recomputed
    assert second["kid"] == pytest.approx(first["kid"], rel=1e-5)


# --- bedgen eval ---------------------------------------------------------------------------


def test_eval_cli_prints_one_json_object_and_appends_it_to_bedgen_json(stats64, model, weights, capsys):
    args = ["eval", "--model", model, "--ref", stats64, "-n", 6, "--steps", 3, "--metrics", "fid,kid,pr",
            "--inception-weights", weights, "--batch-size", 4, "--dtype", "fp32", "--seed", 7]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert {"fid", "kid", "kid_std", "precision", "recall"} <= result.keys() and "is" not in result
    assert result["num_samples"] == 6 and result["seed"] == 7 and result["steps"] == 3
    assert result["resolution"] == SIZE and result["sampler"] == "dpmsolver++"
    assert result["reference"]["path"] == str(stats64) and result["reference_jpeg"] is False
    assert result["inception"]["weights"] == str(weights)
    assert result["seconds"]["total"] > 0
    assert f"stored in {model / 'bedgen.json'}" in err
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    history = json.loads((model / "bedgen.json").read_text())["metrics"]
    assert len(history) == 2 and history[1] == json.loads(out)
    assert history[0]["fid"] == pytest.approx(history[1]["fid"], rel=1e-6)  # seeded: the same samples
    assert bedgen.load(str(model)).info.metadata["metrics"][0]["num_samples"] == 6


def test_eval_of_a_foreign_model_is_printed_but_not_stored(root, model, stats64, weights, capsys):
    foreign = root / "foreign"
    shutil.copytree(model, foreign)
    (foreign / "bedgen.json").unlink()
    code, out, err = run_cli(capsys, "eval", "--model", foreign, "--ref", stats64, "-n", 4, "--steps", 2,
                             "--metrics", "fid", "--inception-weights", weights)
    assert code == 0, err
    assert json.loads(out)["fid"] > 0
    assert "not stored" in err and "not a local bedgen checkpoint" in err
    assert not (foreign / "bedgen.json").exists()


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(root, rooms, weights, stats64):
    ours = ReferenceStats.load(stats64)
    files = {"missing": root / "missing.npz", "no-mu": root / "no-mu.npz", "adm": root / "adm.npz",
             "adm-32": root / "adm-32.npz", "pickled": root / "pickled.npz", "text-weights": root / "weights.txt",
             "other-state-dict": root / "other.pth", "other-weights": root / "other-inception.pth"}
    np.savez(files["no-mu"], images=np.zeros((2, SIZE, SIZE, 3), np.uint8))
    np.savez(files["adm"], mu=ours.mu, sigma=ours.sigma)
    np.savez(files["adm-32"], mu=ours.mu, sigma=ours.sigma, arr_0=np.zeros((2, 32, 32, 3), np.uint8))
    np.savez(files["pickled"], mu=np.array([{"x": 1}], dtype=object), sigma=ours.sigma)
    files["text-weights"].write_text("not weights")
    torch.save({"conv.weight": torch.zeros(3)}, files["other-state-dict"])
    save_random_inception(files["other-weights"], seed=1)
    files["stats-32"] = compute_reference_stats(str(rooms), 32, inception_weights=weights, feature_layer="64").save(
        root / "rooms-32.npz")
    return files


@pytest.mark.parametrize("change, message", [
    ({"--ref": "missing"}, "do not exist; make them with bedgen ref-stats"),
    ({"--ref": "stats-32"}, "holds statistics of 32 px images but the model makes 16 px images"),
    ({"--ref": "adm-32"}, "holds statistics of 32 px images but the model makes 16 px images"),
    ({"-n": "1"}, "number of samples must be at least 2"),
    ({"--metrics": "fid,foo"}, "unknown metric 'foo'; choose from fid, kid, is, pr"),
    ({"--ref": "no-mu"}, "has no mu and sigma"),
    ({"--ref": "pickled"}, "cannot read reference statistics"),
    ({"--ref": "adm", "--metrics": "fid,kid"}, "KID needs reference features"),
    ({"--ref": "adm", "--metrics": "pr"}, "PR needs reference features"),
    ({"--inception-weights": "missing"}, "do not exist; pass --inception-weights"),
    ({"--inception-weights": "text-weights"}, "cannot read Inception weights"),
    ({"--inception-weights": "other-state-dict"}, "is not torch-fidelity's InceptionV3 weights"),
    ({"--inception-weights": "other-weights"}, "features from different weights cannot be compared"),
])
def test_bad_eval_input_gets_a_clear_error(change, message, bad_inputs, model, stats64, weights, capsys):
    options = {"--ref": str(stats64), "--inception-weights": str(weights), "-n": "4", "--metrics": "fid"}
    for flag, value in change.items():
        options[flag] = str(bad_inputs.get(value, value))
    code, out, err = run_cli(capsys, "eval", "--model", model, "--steps", 2, *[x for kv in options.items() for x in kv])
    assert code == 2 and out == ""
    assert message in err and err.startswith("bedgen: error:") and len(err.strip().splitlines()) == 1


def test_ref_stats_refuses_an_output_that_is_not_npz(rooms, weights, tmp_path, capsys):
    code, _, err = run_cli(capsys, "ref-stats", "--data", rooms, "--resolution", SIZE, "--out", tmp_path / "s.json",
                           "--inception-weights", weights)
    assert code == 2 and "--out must be a .npz file" in err


def test_python_api_errors_are_bedgen_errors(model, stats64, weights):
    pipe = bedgen.load(str(model))
    with pytest.raises(BedgenError, match="number of samples must be at least 2"):
        evaluate(pipe, stats64, num_samples=1, inception_weights=weights)
    with pytest.raises(BedgenError, match="unknown Inception feature layer"):
        compute_reference_stats(str(stats64.parent), SIZE, feature_layer="1000", inception_weights=weights)


# --- FID during training ------------------------------------------------------------------------


TINY_TRAIN = [
    "--preset", "tiny", "--resolution", SIZE, "--set", "unet.block_out_channels=[8,16]",
    "--set", 'unet.down_block_types=["DownBlock2D","AttnDownBlock2D"]',
    "--set", 'unet.up_block_types=["AttnUpBlock2D","UpBlock2D"]', "--set", "unet.norm_num_groups=4",
    "--set", "diffusion.num_train_timesteps=100", "--set", "sampling.steps=3",
    "--batch-size", 4, "--preview-every", 0, "--mixed-precision", "no", "--log-every", 1,
]


def test_training_logs_fid_and_keeps_the_best_fid_checkpoint(rooms, stats64, weights, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", rooms, "--out", run, *TINY_TRAIN, "--max-steps", 3,
                           "--checkpoint-every", 2, "--fid-every", 2, "--fid-samples", 4, "--fid-batch-size", 4,
                           "--fid-ref", stats64, "--inception-weights", weights)
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fids = [r for r in records if "fid" in r]
    assert [r["step"] for r in fids] == [2, 3]  # every 2 steps, and the last step
    assert all(r["fid_samples"] == 4 and r["fid"] > 0 for r in fids)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3] and all("fid" not in r for r in records if "loss" in r)
    best = min(fids, key=lambda r: r["fid"])
    assert fids[-1]["best_fid"] == best["fid"] and fids[-1]["best_fid_step"] == best["step"]
    status = json.loads((run / "bedgen-run.json").read_text())
    assert status["best_fid"] == {"fid": best["fid"], "step": best["step"], "checkpoint": "best-fid"}
    pipe = bedgen.load(str(run / "best-fid"))
    assert len(pipe.generate(1, seed=0, steps=2)) == 1
    assert pipe.info.metadata["metrics"][0]["fid"] == best["fid"]
    assert pipe.info.metadata["training"]["step"] == best["step"]
    last = json.loads((run / "checkpoints" / "step-000003" / "bedgen.json").read_text())
    assert last["metrics"][0]["fid"] == fids[-1]["fid"] and last["config"]["train"]["fid_every"] == 2
    # The number logged while training is what bedgen eval says about the saved weights.
    again = evaluate(pipe, stats64, num_samples=4, metrics="fid", seed=0, batch_size=4, inception_weights=weights)
    assert again["fid"] == best["fid"]


@pytest.mark.slow
def test_training_fid_under_accelerate_launch_with_two_processes(rooms, stats64, weights, tmp_path):
    """Each process generates its share of the samples; gathered in order, they give the
    FID of the same samples generated by one process."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    args = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bedgen", "train",
            "--data", rooms, "--out", run, *TINY_TRAIN, "--max-steps", 2, "--checkpoint-every", 2,
            "--fid-every", 2, "--fid-samples", 5, "--fid-batch-size", 2, "--fid-ref", stats64,
            "--inception-weights", weights]
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "fid" in r] == [2]  # logged once, by the main process
    alone = evaluate(bedgen.load(str(run / "best-fid")), stats64, num_samples=5, metrics="fid", seed=0,
                     batch_size=5, inception_weights=weights)
    assert alone["fid"] == pytest.approx(records[-1]["fid"], rel=1e-9)


def test_training_fid_events_for_the_app(rooms, stats64, weights, tmp_path):
    from bedgen.training.trainer import Trainer

    from conftest import tiny_config

    config = tiny_config(**{
        "data.source": str(rooms), "train.batch_size": 4, "train.max_steps": 1, "train.preview_every": 0,
        "train.mixed_precision": "no", "sampling.steps": 2, "train.fid_every": 5, "train.fid_samples": 3,
        "train.fid_ref": str(stats64), "train.inception_weights": str(weights),
    })
    events = []
    Trainer(config, tmp_path / "run", on_event=events.append, progress=False).train()
    fid_events = [e for e in events if e["event"] == "fid"]
    assert len(fid_events) == 1 and fid_events[0]["step"] == 1 and fid_events[0]["best"] is True  # the last step


@pytest.mark.parametrize("flags, message", [
    (["--fid-every", 2], "--fid-every needs --fid-ref"),
    (["--fid-every", 2, "--fid-ref", "missing.npz"], "do not exist"),
    (["--fid-every", 2, "--fid-samples", 1, "--fid-ref", "x.npz"], "--fid-samples must be at least 2"),
])
def test_bad_training_fid_input_stops_before_training(flags, message, rooms, weights, tmp_path, capsys):
    flags = [str(tmp_path / f) if str(f).endswith(".npz") else f for f in flags]
    code, _, err = run_cli(capsys, "train", "--data", rooms, "--out", tmp_path / "run", *TINY_TRAIN,
                           "--max-steps", 2, "--inception-weights", weights, *flags)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()
