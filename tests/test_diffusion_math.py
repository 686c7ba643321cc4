"""bedgen.maths.diffusion against independent float64 references written here from the papers.

Every reference below is plain ``math`` / numpy float64 code transcribed from the
formulas of Ho et al. 2020 (DDPM) and Nichol & Dhariwal 2021 (iDDPM); none calls the
module's own helpers. Timesteps are 0-based indices (index t is the paper's step t+1).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from bedgen.maths import diffusion as dm

T = 100
LN2 = math.log(2.0)


# --- float64 references -------------------------------------------------------------------


def linear_betas(n: int = T, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    return np.linspace(start, end, n, dtype=np.float64)


def cosine_betas(n: int = T, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """iDDPM Eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    β_t = 1 - ᾱ_t/ᾱ_{t-1}, clipped to 0.999.
    """

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return np.array([min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)])


def ref_schedule(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Ho et al. Eq. 4 and 7 term by term, with a plain running product for ᾱ."""
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - float(b)
        abar.append(prod)
    abar = np.array(abar)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    alphas = 1.0 - betas
    var = betas * (1 - abar_prev) / (1 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "posterior_variance": var,
        "posterior_log_variance_clipped": np.log(np.concatenate([[var[1]], var[1:]])),
        "posterior_mean_coef1": np.sqrt(abar_prev) * betas / (1 - abar),
        "posterior_mean_coef2": np.sqrt(alphas) * (1 - abar_prev) / (1 - abar),
    }


def col(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a[t] as an (N, 1, 1, 1) column."""
    return a[t].reshape(-1, 1, 1, 1)


def exact_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def tanh_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def ref_discretized_ll(x, mean, log_scale, cdf=tanh_cdf) -> np.ndarray:
    """DDPM Eq. 13: log ∫ N(y; μ, σ²) dy over [x - 1/255, x + 1/255], open at x = ±1."""
    x, mean, log_scale = np.broadcast_arrays(
        np.asarray(x, np.float64), np.asarray(mean, np.float64), np.asarray(log_scale, np.float64)
    )
    sigma = np.exp(log_scale)
    upper = np.where(x > 0.999, 1.0, cdf((x + 1 / 255 - mean) / sigma))
    lower = np.where(x < -0.999, 0.0, cdf((x - 1 / 255 - mean) / sigma))
    return np.log(np.maximum(upper - lower, 1e-12))


def ref_kl(m1, lv1, m2, lv2) -> np.ndarray:
    """KL(N(m1, σ1²) || N(m2, σ2²)) = log(σ2/σ1) + (σ1² + (m1 - m2)²) / (2σ2²) - ½."""
    s1, s2 = np.exp(0.5 * lv1), np.exp(0.5 * lv2)
    return np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def ref_p(betas, out, xt, t):
    """p_θ(x_{t-1}|x_t) from [ε, v]: DDPM Eq. 11 for the mean, iDDPM Eq. 15 for log Σ."""
    r = ref_schedule(betas)
    c = xt.shape[1]
    eps, v = out[:, :c], out[:, c:]
    alphas = 1.0 - betas
    abar = col(r["alphas_cumprod"], t)
    mean = (xt - col(betas, t) / np.sqrt(1 - abar) * eps) / np.sqrt(col(alphas, t))
    frac = (v + 1) / 2
    logvar = frac * np.log(col(betas, t)) + (1 - frac) * col(r["posterior_log_variance_clipped"], t)
    return mean, logvar


def ref_vlb(betas, out, x0, xt, t) -> np.ndarray:
    """iDDPM Eq. 4-5 in bits/dim: decoder NLL at t = 0, KL(q || p) elsewhere."""
    r = ref_schedule(betas)
    mean, logvar = ref_p(betas, out, xt, t)
    true_mean = col(r["posterior_mean_coef1"], t) * x0 + col(r["posterior_mean_coef2"], t) * xt
    true_logvar = col(r["posterior_log_variance_clipped"], t)
    kl = ref_kl(true_mean, true_logvar, mean, logvar).reshape(len(t), -1).mean(1) / LN2
    nll = -ref_discretized_ll(x0, mean, 0.5 * logvar).reshape(len(t), -1).mean(1) / LN2
    return np.where(t == 0, nll, kl)


def to64(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def batch(seed: int = 0, n: int = 6, c: int = 3, hw: int = 4, t=None):
    g = torch.Generator().manual_seed(seed)
    # x0 on the 256-level grid in [-1, 1], including both edge values
    x0 = torch.randint(0, 256, (n, c, hw, hw), generator=g).float() / 127.5 - 1.0
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0
    noise = torch.randn(n, c, hw, hw, generator=g)
    out = torch.randn(n, 2 * c, hw, hw, generator=g)
    out[:, c:] = out[:, c:].tanh()  # v in [-1, 1]
    if t is None:
        t = torch.tensor([0, 1, 2, T // 2, T - 2, T - 1][:n])
    return x0, noise, out, t


def assert_vb_close(got: torch.Tensor, expected: np.ndarray, t: torch.Tensor) -> None:
    """KL terms to float32 precision; the t = 0 decoder NLL looser: improved-diffusion's
    float32 formula takes differences of CDFs near 0 or 1 for pixels in a tail."""
    got, dec = to64(got), (t == 0).numpy()
    np.testing.assert_allclose(got[~dec], expected[~dec], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[dec], expected[dec], rtol=2e-3)


SCHEDULES = {"linear": linear_betas(), "cosine": cosine_betas()}


@pytest.fixture(params=sorted(SCHEDULES))
def betas(request) -> np.ndarray:
    return SCHEDULES[request.param]


# --- schedule -------------------------------------------------------------------------------


def test_schedule_matches_float64_reference(betas):
    s = dm.Schedule.from_betas(betas)
    ref = ref_schedule(betas)
    for name, expected in ref.items():
        got = getattr(s, name)
        assert got.dtype == torch.float32 and got.shape == (T,), name
        np.testing.assert_allclose(to64(got), expected, rtol=2e-6, atol=0, err_msg=name)
    # β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t), and β̃_0 = 0 (its log is clipped to log β̃_1)
    for t in (0, 1, 2, T // 2, T - 1):
        a, a_prev = math.prod(1 - b for b in betas[: t + 1]), math.prod(1 - b for b in betas[:t])
        expected = betas[t] * (1 - a_prev) / (1 - a)
        assert s.posterior_variance[t].item() == pytest.approx(expected, rel=1e-6, abs=0)
    assert s.posterior_variance[0].item() == 0.0
    clipped = math.log(ref["posterior_variance"][1])
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(clipped, rel=1e-6)
    assert s.num_timesteps == T


def test_schedule_accepts_tensors_and_moves():
    b = torch.tensor(linear_betas(), dtype=torch.float32)
    s = dm.Schedule.from_betas(b)
    assert torch.equal(s.betas, b)
    moved = s.to("cpu")
    assert isinstance(moved, dm.Schedule) and torch.equal(moved.alphas_cumprod, s.alphas_cumprod)
    with pytest.raises(ValueError):
        dm.Schedule.from_betas(np.array([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError):
        dm.Schedule.from_betas(np.zeros((2, 2)))


@pytest.mark.parametrize(
    "beta_schedule,reference", [("linear", linear_betas), ("squaredcos_cap_v2", cosine_betas)]
)
@pytest.mark.parametrize("n", [100, 1000])
def test_from_scheduler_matches_diffusers(beta_schedule, reference, n):
    sched = DDPMScheduler(num_train_timesteps=n, beta_schedule=beta_schedule)
    s = dm.Schedule.from_scheduler(sched)
    # exactly the betas the sampler steps with ...
    assert torch.equal(s.betas, sched.betas)
    # ... which are the paper's schedule rounded to float32
    np.testing.assert_allclose(to64(s.betas), reference(n), rtol=1e-6)
    # diffusers' ᾱ is a float32 cumprod; ours is float64 then cast: equal up to its rounding
    np.testing.assert_allclose(to64(s.alphas_cumprod), to64(sched.alphas_cumprod), rtol=5e-5)
    # the fixed-small variance diffusers samples with is our β̃_t (t ≥ 1); diffusers
    # computes it in float32 as (1-ᾱ_{t-1})/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_{t-1}), which cancels badly at
    # small t (up to ~1e-3 relative), so only that close
    variances = torch.stack([sched._get_variance(t) for t in range(1, n)])
    np.testing.assert_allclose(to64(s.posterior_variance[1:]), to64(variances), rtol=2e-3)
    # and the float64 recomputation from diffusers' float32 betas matches our reference
    ref = ref_schedule(to64(sched.betas))
    np.testing.assert_allclose(to64(s.alphas_cumprod), ref["alphas_cumprod"], rtol=2e-6)


def test_extract_shapes_and_gathers():
    values = torch.arange(10.0)
    t = torch.tensor([3, 0, 9])
    out = dm.extract(values, t, 4)
    assert out.shape == (3, 1, 1, 1)
    assert out.flatten().tolist() == [3.0, 0.0, 9.0]
    assert dm.extract(values, t, 1).shape == (3,)


# --- forward process and posterior ----------------------------------------------------------------


def test_q_sample_and_x0_from_eps(betas):
    s = dm.Schedule.from_betas(betas)
    x0, noise, _, t = batch()
    r = ref_schedule(betas)
    abar = col(r["alphas_cumprod"], t.numpy())
    xt = dm.q_sample(s, x0, t, noise)
    expected = np.sqrt(abar) * to64(x0) + np.sqrt(1 - abar) * to64(noise)  # DDPM Eq. 4
    np.testing.assert_allclose(to64(xt), expected, rtol=1e-5, atol=1e-6)
    # x̂_0 = (x_t - √(1-ᾱ) ε)/√ᾱ inverts it
    x0_hat = dm.predict_x0_from_eps(s, xt, t, noise)
    expected = (to64(xt) - np.sqrt(1 - abar) * to64(noise)) / np.sqrt(abar)
    # float32 rounding is amplified by 1/√ᾱ_t (large at the cosine schedule's end)
    tol = 1e-6 + 1e-5 * (np.abs(to64(xt)) + np.abs(to64(noise))) / np.sqrt(abar)
    assert (np.abs(to64(x0_hat) - expected) <= tol).all()
    np.testing.assert_allclose(to64(x0_hat[:3]), to64(x0[:3]), atol=1e-4)  # well-conditioned t


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_split_prediction_recovers_x0_and_eps_from_each_parameterisation(kind):
    """x_t = √ᾱ x_0 + √(1-ᾱ) ε (DDPM Eq. 4); the exact network output for each kind
    (ε, v = √ᾱ ε - √(1-ᾱ) x_0 of Salimans & Ho 2022 Sec. 4, or x_0) gives back both."""
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64).unbind(0)
    abar = torch.tensor(0.3, dtype=torch.float64)
    xt = math.sqrt(0.3) * x0 + math.sqrt(0.7) * eps
    out = {"epsilon": eps, "v_prediction": math.sqrt(0.3) * eps - math.sqrt(0.7) * x0, "sample": x0}[kind]
    got_x0, got_eps = dm.split_prediction(out, xt, abar, kind)
    assert torch.allclose(got_x0, x0, atol=1e-12) and torch.allclose(got_eps, eps, atol=1e-12)


def test_ddim_move_is_eq_12_with_zero_noise():
    x0, eps = torch.full((1, 1), 0.5, dtype=torch.float64), torch.full((1, 1), -2.0, dtype=torch.float64)
    moved = dm.ddim_move(x0, eps, torch.tensor(0.64, dtype=torch.float64))
    assert moved.item() == pytest.approx(0.8 * 0.5 + 0.6 * -2.0, abs=1e-12)


def test_q_posterior_is_bayes_rule(betas):
    """μ̃, β̃ of Eq. 6-7 equal the Gaussian product q(x_t | x_{t-1}) q(x_{t-1} | x_0), normalised."""
    s = dm.Schedule.from_betas(betas)
    x0, noise, _, t = batch(seed=1)
    xt = dm.q_sample(s, x0, t, noise)
    mean, var, logvar = dm.q_posterior_mean_variance(s, x0, xt, t)
    assert mean.shape == var.shape == logvar.shape == x0.shape
    tn = t.numpy()
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    for i, ti in enumerate(tn):
        if ti == 0:  # q(x_{-1} | x_0, x_0) is a point mass at x_0: mean coef1 = 1, coef2 = 0
            np.testing.assert_allclose(to64(mean[i]), to64(x0[i]), atol=1e-6)
            assert var[i].max().item() == 0.0
            continue
        prior_var = 1 - abar[ti - 1]  # q(x_{t-1} | x_0) = N(√ᾱ_{t-1} x_0, 1 - ᾱ_{t-1})
        precision = 1 / prior_var + alphas[ti] / betas[ti]  # q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t)
        post_var = 1 / precision
        post_mean = post_var * (
            np.sqrt(abar[ti - 1]) * to64(x0[i]) / prior_var
            + np.sqrt(alphas[ti]) * to64(xt[i]) / betas[ti]
        )
        np.testing.assert_allclose(to64(mean[i]), post_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to64(var[i]), post_var, rtol=1e-5)
        np.testing.assert_allclose(to64(logvar[i]), math.log(post_var), rtol=1e-5)


# --- reverse process ------------------------------------------------------------------------


def test_learned_range_extremes(betas):
    s = dm.Schedule.from_betas(betas)
    r = ref_schedule(betas)
    t = torch.tensor([0, 1, T // 2, T - 1])
    shape = (4, 3, 2, 2)
    lo = dm.learned_range_log_variance(s, -torch.ones(shape), t)
    hi = dm.learned_range_log_variance(s, torch.ones(shape), t)
    mid = dm.learned_range_log_variance(s, torch.zeros(shape), t)
    var = r["posterior_variance"]
    log_tilde = np.log(np.concatenate([[var[1]], var[1:]]))  # β̃_0 = 0 clipped to β̃_1
    for i, ti in enumerate(t.tolist()):
        np.testing.assert_allclose(to64(lo[i]), log_tilde[ti], rtol=1e-6)  # Σ = β̃_t
        np.testing.assert_allclose(to64(hi[i]), math.log(betas[ti]), rtol=1e-6)  # Σ = β_t
        np.testing.assert_allclose(to64(mid[i]), 0.5 * (log_tilde[ti] + math.log(betas[ti])), rtol=1e-6)


def test_p_mean_variance_matches_ddpm_eq11(betas):
    s = dm.Schedule.from_betas(betas)
    x0, noise, out, t = batch(seed=2)
    xt = dm.q_sample(s, x0, t, noise)
    mean, logvar, pred_x0 = dm.p_mean_variance(s, out, xt, t, clip_x0=False)
    ref_mean, ref_logvar = ref_p(betas, to64(out), to64(xt), t.numpy())
    np.testing.assert_allclose(to64(mean), ref_mean, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(to64(logvar), ref_logvar, rtol=1e-5, atol=1e-5)
    # clipping: x̂_0 in [-1, 1] and μ = μ̃(x_t, clip(x̂_0))
    r = ref_schedule(betas)
    mean_c, _, pred_c = dm.p_mean_variance(s, out, xt, t, clip_x0=True)
    assert pred_c.abs().max() <= 1.0 and torch.equal(pred_c, pred_x0.clamp(-1, 1))
    tn = t.numpy()
    expected = (
        col(r["posterior_mean_coef1"], tn) * to64(pred_c)
        + col(r["posterior_mean_coef2"], tn) * to64(xt)
    )
    np.testing.assert_allclose(to64(mean_c), expected, rtol=1e-5, atol=1e-5)
    # C channels: ε only, fixed small variance β̃_t
    _, logvar_fixed, _ = dm.p_mean_variance(s, out[:, :3], xt, t)
    np.testing.assert_allclose(
        to64(logvar_fixed[:, 0, 0, 0]), r["posterior_log_variance_clipped"][tn], rtol=1e-6
    )
    with pytest.raises(ValueError):
        dm.p_mean_variance(s, out[:, :4], xt, t)


# --- KL and the decoder ---------------------------------------------------------------------------


def test_normal_kl():
    m = torch.randn(5, 3, dtype=torch.float64)
    lv = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(dm.normal_kl(m, lv, m, lv), torch.zeros_like(m), atol=1e-12)
    # N(1, 1) || N(0, 4): log 2 + (1 + 1)/8 - 1/2
    kl = dm.normal_kl(torch.tensor(1.0), torch.tensor(0.0), 0.0, math.log(4.0))
    assert kl.item() == pytest.approx(math.log(2.0) + 0.25 - 0.5, rel=1e-6)
    m2, lv2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    expected = ref_kl(to64(m), to64(lv), to64(m2), to64(lv2))
    np.testing.assert_allclose(to64(dm.normal_kl(m, lv, m2, lv2)), expected, rtol=1e-10)
    assert (dm.normal_kl(m, lv, m2, lv2) >= 0).all()


def test_approx_standard_normal_cdf():
    x = np.linspace(-6, 6, 2001)
    got = to64(dm.approx_standard_normal_cdf(torch.tensor(x)))
    np.testing.assert_allclose(got, exact_cdf(x), atol=2e-4)  # the tanh approximation's error
    np.testing.assert_allclose(got, tanh_cdf(x), atol=1e-12)


def test_discretized_log_likelihood_vs_exact_cdf():
    g = torch.Generator().manual_seed(3)
    bins = torch.randint(0, 256, (2000,), generator=g)
    x = bins.double() / 127.5 - 1.0
    x[:20], x[20:40] = -1.0, 1.0  # the open-ended edge bins
    means = (x + 0.05 * torch.randn(2000, generator=g, dtype=torch.float64)).float()
    log_scales = torch.empty(2000).uniform_(math.log(0.003), math.log(0.3), generator=g)
    ll = dm.discretized_gaussian_log_likelihood(x.float(), means, log_scales)
    assert ll.shape == x.shape and (ll <= 0).all()
    args = (to64(x), to64(means), to64(log_scales))
    exact = ref_discretized_ll(*args, cdf=exact_cdf)
    # probabilities agree to the approximation's CDF error (two CDFs per bin)
    np.testing.assert_allclose(np.exp(to64(ll)), np.exp(exact), atol=4e-4)
    # and log-probabilities closely wherever a bin holds real mass
    big = np.exp(exact) > 0.2
    np.testing.assert_allclose(to64(ll)[big], exact[big], atol=2.5e-3)
    # against the same tanh approximation in float64 it agrees to float32 rounding
    # (in log space only where the bin has mass: far tails are float32 CDF differences)
    approx = ref_discretized_ll(*args)
    np.testing.assert_allclose(np.exp(to64(ll)), np.exp(approx), atol=2e-5)
    held = np.exp(approx) > 1e-3
    np.testing.assert_allclose(to64(ll)[held], approx[held], atol=2e-4)
    # the edge bins specifically, one hand-computed case each: mean 0.98, σ = 0.02
    edge = dm.discretized_gaussian_log_likelihood(
        torch.tensor([1.0, -1.0]), torch.tensor([0.98, -0.98]), torch.full((2,), math.log(0.02))
    )
    p_top = 1 - 0.5 * (1 + math.erf((1 - 1 / 255 - 0.98) / 0.02 / math.sqrt(2)))  # P(y ≥ 1 - 1/255)
    assert math.exp(edge[0].item()) == pytest.approx(p_top, abs=4e-4)
    assert math.exp(edge[1].item()) == pytest.approx(p_top, abs=4e-4)  # symmetric


@pytest.mark.parametrize("mean,scale", [(0.3, 0.2), (-0.97, 0.05), (0.999, 0.01), (0.0, 2.0)])
def test_discretized_bins_sum_to_one(mean, scale):
    x = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0  # all 256 levels, -1 and 1 included
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    means, log_scales = torch.full_like(x, mean), torch.full_like(x, math.log(scale))
    ll = dm.discretized_gaussian_log_likelihood(x, means, log_scales)
    assert ll.exp().double().sum().item() == pytest.approx(1.0, abs=1e-5)


# --- the variational bound and the hybrid loss -------------------------------------------------------


def test_vlb_terms_decoder_at_zero_kl_elsewhere(betas):
    s = dm.Schedule.from_betas(betas)
    x0, noise, out, t = batch(seed=4)
    xt = dm.q_sample(s, x0, t, noise)
    vb = dm.vlb_terms(s, out, x0, xt, t)
    assert vb.shape == (len(t),)
    expected = ref_vlb(betas, to64(out), to64(x0), to64(xt), t.numpy())
    assert_vb_close(vb, expected, t)
    # t = 0 is exactly the decoder NLL, not the KL (and t > 0 the KL)
    mean, logvar = ref_p(betas, to64(out), to64(xt), t.numpy())
    nll0 = -ref_discretized_ll(to64(x0[0]), mean[0], 0.5 * logvar[0]).mean() / LN2
    assert vb[0].item() == pytest.approx(nll0, rel=1e-4)
    r = ref_schedule(betas)
    kl0 = ref_kl(to64(x0[0]), r["posterior_log_variance_clipped"][0], mean[0], logvar[0]).mean() / LN2
    assert abs(nll0 - kl0) > 1e-2
    # every t > 0 term is a KL, so non-negative; an exact model has KL 0
    assert (vb[1:] >= -1e-6).all()
    tn = t.numpy()
    true_x0_out = out.clone()
    true_x0_out[:, :3] = noise  # ε_θ = ε  ⇒  x̂_0 = x_0 ⇒ μ_θ = μ̃
    true_x0_out[:, 3:] = -1.0  # Σ_θ = β̃_t
    exact_model = dm.vlb_terms(s, true_x0_out, x0, xt, t)
    assert exact_model[1:].abs().max().item() < 5e-3
    assert ref_vlb(betas, to64(true_x0_out), to64(x0), to64(xt), tn)[1:].max() < 1e-6


def test_hybrid_loss_value(betas):
    s = dm.Schedule.from_betas(betas)
    x0, noise, out, t = batch(seed=5)
    xt = dm.q_sample(s, x0, t, noise)
    mse = ((to64(noise) - to64(out[:, :3])) ** 2).reshape(len(t), -1).mean(1)
    vb = ref_vlb(betas, to64(out), to64(x0), to64(xt), t.numpy())
    # defaults λ = 0.001, T = len(betas): L_simple + λ·T·L_t (improved-diffusion's vb·T/1000)
    loss = dm.hybrid_loss(s, out, x0, xt, t, noise)
    assert loss.shape == (len(t),)
    assert_vb_close(loss, mse + 0.001 * T * vb, t)
    # explicit weight and T (e.g. a respaced process)
    loss = dm.hybrid_loss(s, out, x0, xt, t, noise, vlb_weight=0.01, num_timesteps=250)
    assert_vb_close(loss, mse + 0.01 * 250 * vb, t)
    terms = dm.hybrid_loss_terms(s, out, x0, xt, t, noise)
    np.testing.assert_allclose(to64(terms["mse"]), mse, rtol=1e-5)
    assert_vb_close(terms["vb"], vb, t)
    # the parts add up to the loss exactly as documented
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.001 * T * terms["vb"])
    with pytest.raises(ValueError):
        dm.hybrid_loss(s, out[:, :3], x0, xt, t, noise)


def test_hybrid_loss_stops_vlb_gradient_to_eps():
    betas = linear_betas()
    s = dm.Schedule.from_betas(betas)
    x0, noise, out, t = batch(seed=6)
    xt = dm.q_sample(s, x0, t, noise)
    out = out.clone().requires_grad_(True)
    dm.hybrid_loss(s, out, x0, xt, t, noise, vlb_weight=1e3).sum().backward()
    d = x0[0].numel()
    # the ε half sees only L_simple: d/dε mean((ε - ε_θ)²) = -2 (ε - ε_θ) / D
    expected_eps_grad = -2 * (noise - out[:, :3].detach()) / d
    torch.testing.assert_close(out.grad[:, :3], expected_eps_grad, rtol=1e-5, atol=1e-7)
    # the v half sees only λ·T·L_vlb, and does see it
    assert out.grad[:, 3:].abs().sum() > 0
    # sanity: without the stop-gradient the ε half would get a large extra gradient
    out2 = out.detach().clone().requires_grad_(True)
    mse = ((noise - out2[:, :3]) ** 2).mean(dim=(1, 2, 3))
    (mse + 1e3 * T * dm.vlb_terms(s, out2, x0, xt, t)).sum().backward()
    assert (out2.grad[:, :3] - expected_eps_grad).abs().max() > 1e-3
    torch.testing.assert_close(out2.grad[:, 3:], out.grad[:, 3:], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    s = dm.Schedule.from_betas(cosine_betas())
    x0, noise, out, t = batch(seed=7)
    xt = dm.q_sample(s, x0, t, noise)
    cpu = dm.hybrid_loss(s, out, x0, xt, t, noise)
    sc = s.to("cuda")
    gpu = dm.hybrid_loss(sc, out.cuda(), x0.cuda(), xt.cuda(), t.cuda(), noise.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    # bf16 network outputs are promoted to float32 by the schedule factors
    bf = dm.hybrid_loss(sc, out.cuda().bfloat16(), x0.cuda(), xt.cuda(), t.cuda(), noise.cuda())
    assert bf.dtype == torch.float32
    sampler = dm.ImportanceSampler(T)
    tt, w = sampler.sample(8, torch.Generator("cuda").manual_seed(0), "cuda")
    assert tt.device.type == w.device.type == "cuda"


# --- importance sampling ------------------------------------------------------------------------


def warm(sampler: dm.ImportanceSampler, losses_per_t: list[float]) -> None:
    for _ in range(sampler.history):
        sampler.update(torch.arange(len(losses_per_t)), torch.tensor(losses_per_t))


def test_importance_uniform_before_warmup():
    sampler = dm.ImportanceSampler(4)
    sampler.update(torch.tensor([0, 1, 2]), torch.tensor([100.0, 1.0, 1.0]))  # t = 3 never seen
    assert not sampler.warmed_up
    g = torch.Generator().manual_seed(0)
    t, w = sampler.sample(40_000, g, "cpu")
    assert t.dtype == torch.long and w.dtype == torch.float32 and torch.equal(w, torch.ones(40_000))
    freq = torch.bincount(t, minlength=4).double() / 40_000
    assert (freq - 0.25).abs().max() < 0.015
    # before warm-up it draws what a uniform sampler draws from the same generator
    t1, _ = sampler.sample(16, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(t1, torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1)))


def test_importance_prefers_large_losses_and_is_unbiased():
    n = 5
    sampler = dm.ImportanceSampler(n)
    losses = [1.0, 1.0, 2.0, 1.0, 10.0]
    warm(sampler, losses[:-1] + [0.0])
    sampler.update(torch.full((10,), 4), torch.full((10,), 10.0))  # t = 4's history is replaced
    assert sampler.warmed_up
    w_ref = np.array(losses)  # √E[L²] of constant histories
    p_ref = 0.999 * w_ref / w_ref.sum() + 0.001 / n
    p = sampler.probabilities()
    np.testing.assert_allclose(p.numpy(), p_ref, rtol=1e-12)
    # weights average to one under the sampler's own distribution, exactly and empirically
    assert float((p * (1 / (n * p))).sum()) == pytest.approx(1.0, abs=1e-12)
    t, w = sampler.sample(100_000, torch.Generator().manual_seed(0), "cpu")
    assert w.double().mean().item() == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(w.numpy(), 1 / (n * p_ref[t.numpy()]), rtol=1e-6)
    freq = torch.bincount(t, minlength=n).double().numpy() / 100_000
    assert freq.argmax() == 4 and freq[4] > 0.6
    np.testing.assert_allclose(freq, p_ref, atol=0.01)
    # unbiased: E_{t~p}[w_t L_t] = mean_t L_t
    est = (w.double() * torch.tensor(losses, dtype=torch.float64)[t]).mean().item()
    assert est == pytest.approx(np.mean(losses), rel=0.03)


def test_importance_history_window_and_non_finite():
    sampler = dm.ImportanceSampler(3, history=10)
    sampler.update(torch.full((15,), 1), torch.arange(1.0, 16.0))
    sampler.update(torch.tensor([1, 1]), torch.tensor([float("nan"), float("inf")]))
    state = sampler.state_dict()
    assert state["loss_counts"].tolist() == [0, 10, 0]
    assert state["loss_history"][1].tolist() == [float(v) for v in range(6, 16)]
    with pytest.raises(ValueError):
        sampler.update(torch.tensor([3]), torch.tensor([1.0]))


def test_importance_state_round_trip_safetensors_json(tmp_path):
    n = 50
    sampler = dm.ImportanceSampler(n)
    rng = np.random.default_rng(0)
    for _ in range(30):
        t = torch.from_numpy(rng.integers(0, n, 64))
        sampler.update(t, torch.from_numpy(rng.exponential(size=64)) * (1 + t))
    assert sampler.warmed_up
    state = sampler.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert set(rest) == {"num_timesteps", "history"} and all(type(v) is int for v in rest.values())
    save_file(tensors, str(tmp_path / "s.safetensors"))
    (tmp_path / "s.json").write_text(json.dumps(rest))
    restored = dm.ImportanceSampler(n)
    loaded = {**load_file(str(tmp_path / "s.safetensors")), **json.loads((tmp_path / "s.json").read_text())}
    restored.load_state_dict(loaded)
    g1 = torch.Generator().manual_seed(123)
    g2 = torch.Generator()
    g2.set_state(g1.get_state())
    for _ in range(3):
        a, b = sampler.sample(32, g1, "cpu"), restored.sample(32, g2, "cpu")
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        sampler.update(a[0], a[0].double())
        restored.update(b[0], b[0].double())
    # lists (a JSON-only round trip) load too; a mismatched sampler refuses the state
    as_lists = {
        k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in sampler.state_dict().items()
    }
    other = dm.ImportanceSampler(n)
    other.load_state_dict(json.loads(json.dumps(as_lists)))
    assert torch.equal(other.probabilities(), sampler.probabilities())
    with pytest.raises(ValueError):
        dm.ImportanceSampler(n + 1).load_state_dict(state)
