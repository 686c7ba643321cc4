"""Seeded sampling: reproducibility, batch-size invariance, samplers, bad input."""

import numpy as np
import pytest
import torch

import bedgen
from bedgen.core.device import cpu_has_bf16, resolve
from bedgen.core.errors import BedgenError
from bedgen.sampling.pipeline import MAX_SEED


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return bedgen.load(str(tiny_checkpoint))


def _pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++", "unipc", "euler", "euler-a", "heun"])
def test_batch_size_does_not_change_images(pipe, sampler):
    one = pipe.generate(4, seed=7, steps=4, scheduler=sampler, batch_size=1, dtype="fp32")
    four = pipe.generate(4, seed=7, steps=4, scheduler=sampler, batch_size=4, dtype="fp32")
    assert np.abs(_pixels(one) - _pixels(four)).max() <= 1


def test_image_i_of_seed_s_is_image_0_of_seed_s_plus_i(pipe):
    batch = pipe.generate(3, seed=10, steps=3, scheduler="ddpm", dtype="fp32")
    alone = pipe.generate(1, seed=12, steps=3, scheduler="ddpm", dtype="fp32")
    assert np.abs(_pixels(batch[2:]) - _pixels(alone)).max() <= 1


def test_same_seed_same_bytes_other_seed_other_images(pipe):
    a = pipe.generate(2, seed=1, steps=3, dtype="fp32")
    b = pipe.generate(2, seed=1, steps=3, dtype="fp32")
    c = pipe.generate(2, seed=2, steps=3, dtype="fp32")
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    assert a[0].tobytes() != c[0].tobytes()
    assert a[0].tobytes() != a[1].tobytes()


def test_result_reports_what_was_run_and_progress_counts_evaluations(pipe):
    calls = []
    result = pipe.sample(5, seed=0, steps=3, scheduler="ddim", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert result.seeds == [0, 1, 2, 3, 4] and result.steps == 3 and result.sampler == "ddim"
    assert calls[-1] == (9, 9)  # 3 batches x 3 steps
    assert [d for d, _ in calls] == list(range(1, 10))


def test_trajectory_holds_predicted_clean_images(pipe):
    result = pipe.sample(2, seed=0, steps=6, scheduler="dpmsolver++", trajectory_every=2)
    assert len(result.trajectory) == 2
    assert len(result.trajectory[0]) == 4  # steps 0, 2, 4 and the last
    assert result.trajectory[0][0].size == (16, 16)


def test_previews_come_with_the_trajectory_frames_and_finished_batches_stay_in_them(pipe):
    previews = []
    result = pipe.sample(3, seed=0, steps=6, scheduler="ddim", batch_size=2, trajectory_every=2, dtype="fp32",
                         on_preview=lambda done, total, images: previews.append((done, total, images)))
    # Two batches, each previewed at steps 0, 2, 4 and the last (evaluations 1, 3, 5, 6 of each).
    assert [d for d, _, _ in previews] == [1, 3, 5, 6, 7, 9, 11, 12] and {t for _, t, _ in previews} == {12}
    assert [len(images) for *_, images in previews] == [2, 2, 2, 2, 3, 3, 3, 3]
    # Each preview is the trajectory frame made there; the second batch's show the first batch finished.
    assert previews[1][2][1].tobytes() == result.trajectory[1][1].tobytes()
    assert [im.tobytes() for im in previews[4][2][:2]] == [im.tobytes() for im in result.images[:2]]
    assert previews[5][2][2].tobytes() == result.trajectory[2][1].tobytes()
    pipe.sample(1, seed=0, steps=3, on_preview=lambda *a: pytest.fail("no trajectory, no preview"))


def test_score_model_previews_its_levels(tmp_path):
    from conftest import make_tiny_score_checkpoint

    smld = bedgen.load(str(make_tiny_score_checkpoint(tmp_path / "smld")))
    previews = []
    result = smld.sample(2, seed=0, steps=4, trajectory_every=2,
                         on_preview=lambda done, total, images: previews.append(images))
    assert len(previews) == 2 and all(len(images) == 2 for images in previews)  # levels 0 and 2
    assert previews[1][0].tobytes() == result.trajectory[0][1].tobytes()


def test_auto_placement_on_this_cpu():
    placement = resolve("auto", "auto")
    assert placement.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if placement.device.type == "cpu":
        assert placement.dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert resolve("cpu", "fp32").dtype == torch.float32


def test_bf16_and_fp32_give_close_images(pipe):
    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16, so auto placement is fp32 and there is nothing to compare")
    exact = _pixels(pipe.generate(2, seed=3, steps=4, scheduler="ddim", dtype="fp32"))
    fast = _pixels(pipe.generate(2, seed=3, steps=4, scheduler="ddim", dtype="bf16"))
    assert np.abs(exact - fast).mean() < 8  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "number of images must be between 1"),
        ({"n": -2}, "number of images must be between 1"),
        ({"n": 10**9}, "number of images must be between 1 and 100000"),
        ({"n": 1, "seed": -1}, "seed must be between 0"),
        ({"n": 1, "seed": "abc"}, "seed must be a whole number"),
        ({"n": 1, "seed": 1.5}, "seed must be a whole number"),
        ({"n": 1, "seed": MAX_SEED}, "seed must be between 0"),
        ({"n": 1, "steps": 0}, "steps must be between 1 and 100"),
        ({"n": 1, "steps": 101}, "steps must be between 1 and 100"),
        ({"n": 1, "scheduler": "lms"}, "unknown scheduler 'lms'"),
        ({"n": 1, "batch_size": 0}, "batch size must be between 1"),
        ({"n": 1, "device": "tpu"}, "unknown device 'tpu'"),
        ({"n": 1, "dtype": "fp8"}, "unknown dtype 'fp8'"),
    ],
)
def test_bad_arguments_are_clear_errors(pipe, kwargs, message):
    with pytest.raises(BedgenError, match=message):
        pipe.generate(**kwargs)


def test_impossible_placements_are_clear_errors(pipe):
    with pytest.raises(BedgenError, match="fp16 is not supported on CPU"):
        pipe.generate(1, device="cpu", dtype="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(BedgenError, match="no CUDA GPU is visible"):
            pipe.generate(1, device="cuda")


def test_two_concurrent_requests_on_one_cached_model_keep_their_own_settings(tmp_path):
    """The app shares one pipeline between requests (BEDGEN_CONCURRENCY=2 runs two at once): a
    second request's settings must not leak into the first one's later batches."""
    import threading

    from conftest import make_tiny_score_checkpoint

    pipe = bedgen.load(str(make_tiny_score_checkpoint(tmp_path / "smld")))
    kwargs = dict(steps=3, scheduler="langevin", batch_size=1, dtype="fp32")
    alone_a = pipe.generate(2, seed=1, step_size=1e-5, **kwargs)
    alone_b = pipe.generate(1, seed=9, step_size=3e-4, **kwargs)
    leaked = pipe.generate(2, seed=1, step_size=3e-4, **kwargs)
    assert leaked[1].tobytes() != alone_a[1].tobytes()  # B's step size would show in A's images

    b_started, a_finished = threading.Event(), threading.Event()
    results, errors = {}, []

    def first_request():
        def hold_until_b_runs(done, total):
            if done == 1:  # after A's first batch has begun, let B start and run before A goes on
                assert b_started.wait(120), "the second request never started"
        try:
            results["a"] = pipe.generate(2, seed=1, step_size=1e-5, progress=hold_until_b_runs, **kwargs)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)
        finally:
            a_finished.set()

    def second_request():
        def started(done, total):
            b_started.set()
        try:
            results["b"] = pipe.generate(1, seed=9, step_size=3e-4, progress=started, **kwargs)
        except BaseException as e:
            errors.append(e)
        finally:
            b_started.set()

    threads = [threading.Thread(target=first_request), threading.Thread(target=second_request)]
    threads[0].start()
    threads[1].start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert [im.tobytes() for im in results["a"]] == [im.tobytes() for im in alone_a]
    assert [im.tobytes() for im in results["b"]] == [im.tobytes() for im in alone_b]


def test_a_solver_whose_timesteps_would_collapse_is_refused_before_it_runs(tmp_path):
    """DPM-Solver++ with "leading" spacing spaces its timesteps by T // (steps + 1): at
    steps = T they all become 0 and it ran off its σ table at the last step (IndexError)."""
    from conftest import make_tiny_checkpoint

    pipe = bedgen.load(str(make_tiny_checkpoint(tmp_path / "m", resolution=8, **{"diffusion.num_train_timesteps": 50})))
    with pytest.raises(BedgenError, match="dpmsolver\\+\\+ cannot take 50 steps on this model's 50-step schedule"):
        pipe.sample(1, 0, 50, "dpmsolver++", device="cpu", dtype="fp32")
    assert len(pipe.sample(1, 0, 49, "dpmsolver++", device="cpu", dtype="fp32").images) == 1
    assert len(pipe.sample(1, 0, 50, "ddpm", device="cpu", dtype="fp32").images) == 1
