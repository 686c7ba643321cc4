"""The math of DDPM (Ho et al. 2020) and improved DDPM (Nichol & Dhariwal 2021).

Pure functions over tensors, in the papers' notation; "DDPM Eq. n" and "iDDPM Eq. n"
next to a formula name the equation it implements. No ``nn.Module`` and no diffusers
scheduler object takes part in the math: :class:`Schedule` is a frozen bag of 1-D
tensors computed once in float64 and cast to float32 (as improved-diffusion does),
and every function gathers what it needs with :func:`extract`.

Conventions

* Timesteps are 0-based indices ``t ∈ {0, …, T-1}`` as in improved-diffusion and
  diffusers; index ``t`` is the paper's step ``t+1``. So ``t == 0`` is the decoder
  term L_0 = -log p(x_0 | x_1) and ``alphas_cumprod_prev[0] = 1``.
* Images are (N, C, ...) in [-1, 1]. Per-sample results have shape (N,) and are
  means over C, H, W ("per dimension"); reducing over the batch is the caller's job.
* Variational-bound terms are in bits per dimension (nats / ln 2), as in DDPM and
  improved-diffusion, so they compare with the papers' tables.
* The network predicts ε (``prediction_type="epsilon"``). With learned variances its
  output has 2C channels, ``[ε, v]``, v the raw interpolation value of iDDPM Eq. 15
  in improved-diffusion's "learned_range" parameterisation.

Everything runs on CPU and CUDA; schedule factors are float32, so bf16 network outputs
are promoted to float32 as soon as they meet one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

__all__ = [
    "Schedule",
    "extract",
    "mean_flat",
    "q_sample",
    "q_posterior_mean_variance",
    "predict_x0_from_eps",
    "split_prediction",
    "ddim_move",
    "learned_range_log_variance",
    "p_mean_variance",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "vlb_terms",
    "hybrid_loss_terms",
    "hybrid_loss",
    "ImportanceSampler",
]

_LN2 = math.log(2.0)


# --- the schedule -----------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Per-timestep constants of the forward process, 1-D float32 tensors of length T.

    Build it with :meth:`from_betas` or :meth:`from_scheduler`; everything is derived
    from β in float64 and cast once, so no quantity accumulates float32 rounding.
    """

    betas: torch.Tensor  # β_t                                          DDPM Eq. 2
    alphas_cumprod: torch.Tensor  # ᾱ_t = Π_{s≤t} (1 - β_s)              DDPM Eq. 4, iDDPM Eq. 7
    alphas_cumprod_prev: torch.Tensor  # ᾱ_{t-1}, with ᾱ_{-1} := 1
    # β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t                               DDPM Eq. 7, iDDPM Eq. 12
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor  # log β̃_t, with β̃_0 (= 0) replaced by β̃_1
    # μ̃_t = coef1 · x_0 + coef2 · x_t                                  DDPM Eq. 7, iDDPM Eq. 11
    posterior_mean_coef1: torch.Tensor  # √ᾱ_{t-1} β_t / (1-ᾱ_t)
    posterior_mean_coef2: torch.Tensor  # √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t)
    alphas: torch.Tensor  # α_t = 1 - β_t
    log_betas: torch.Tensor  # log β_t, the upper end of iDDPM Eq. 15
    sqrt_alphas_cumprod: torch.Tensor  # √ᾱ_t
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # √(1-ᾱ_t)
    sqrt_recip_alphas_cumprod: torch.Tensor  # 1/√ᾱ_t
    sqrt_recipm1_alphas_cumprod: torch.Tensor  # √(1/ᾱ_t - 1)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @classmethod
    def from_betas(cls, betas: torch.Tensor | np.ndarray) -> "Schedule":
        """All constants from β_1..β_T (any float dtype), computed in float64."""
        if torch.is_tensor(betas):
            b = betas.detach().to("cpu", torch.float64)
        else:
            b = torch.from_numpy(np.asarray(betas, dtype=np.float64).copy())
        if b.ndim != 1 or b.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        alphas = 1.0 - b
        alphas_cumprod = torch.cumprod(alphas, dim=0)  # DDPM Eq. 4: ᾱ_t = Π_s α_s
        alphas_cumprod_prev = torch.cat([b.new_ones(1), alphas_cumprod[:-1]])
        # DDPM Eq. 7 / iDDPM Eq. 12: β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t
        posterior_variance = b * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # β̃_0 = 0; improved-diffusion clips its log by using β̃_1 at t = 0 (with T = 1
        # there is no β̃_1, and β_0 is the only sensible stand-in).
        first = posterior_variance[1:2] if b.numel() > 1 else b[:1]
        posterior_log_variance_clipped = torch.log(torch.cat([first, posterior_variance[1:]]))
        # DDPM Eq. 7 / iDDPM Eq. 11: μ̃_t = coef1 · x_0 + coef2 · x_t
        coef1 = b * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        coef2 = (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod)
        values = dict(
            betas=b,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            posterior_mean_coef1=coef1,
            posterior_mean_coef2=coef2,
            alphas=alphas,
            log_betas=torch.log(b),
            sqrt_alphas_cumprod=torch.sqrt(alphas_cumprod),
            sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - alphas_cumprod),
            sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod - 1.0),
        )
        return cls(**{k: v.to(torch.float32) for k, v in values.items()})

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> "Schedule":
        """The schedule of a diffusers ``DDPMScheduler`` (or any scheduler with ``betas``).

        Uses ``scheduler.betas`` so training sees exactly the β the sampler steps with;
        ᾱ is recomputed from them in float64 (diffusers' own ``alphas_cumprod`` is a
        float32 cumprod and differs from ours by float32 rounding only).
        """
        betas = getattr(scheduler, "betas", None)
        if betas is None:
            raise ValueError(f"{type(scheduler).__name__} has no 'betas'; cannot build a Schedule")
        return cls.from_betas(torch.as_tensor(betas))

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with every tensor on ``device``."""
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``values[t]`` reshaped to (N, 1, ..., 1) with ``ndim`` dims, on ``t``'s device."""
    out = values.to(t.device)[t.long()]
    return out.reshape(out.shape[0], *([1] * (ndim - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (N, ...) -> (N,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


# --- forward process and its posterior --------------------------------------------------


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A draw from q(x_t | x_0) with the given ε."""
    n = x0.ndim
    # DDPM Eq. 4 (reparameterised as before Eq. 9), iDDPM Eq. 9: x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε
    return extract(s.sqrt_alphas_cumprod, t, n) * x0 + extract(
        s.sqrt_one_minus_alphas_cumprod, t, n
    ) * noise


def q_posterior_mean_variance(
    s: Schedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each shaped like x_t."""
    n = xt.ndim
    # DDPM Eq. 6-7, iDDPM Eq. 10-11:
    # μ̃_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) x_0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t
    mean = extract(s.posterior_mean_coef1, t, n) * x0 + extract(s.posterior_mean_coef2, t, n) * xt
    # DDPM Eq. 7, iDDPM Eq. 12: β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t
    variance = extract(s.posterior_variance, t, n).expand(mean.shape)
    log_variance = extract(s.posterior_log_variance_clipped, t, n).expand(mean.shape)
    return mean, variance, log_variance


def predict_x0_from_eps(
    s: Schedule, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """x̂_0 from a predicted ε: Eq. 4 solved for x_0."""
    n = xt.ndim
    # DDPM Eq. 15: x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε
    return extract(s.sqrt_recip_alphas_cumprod, t, n) * xt - extract(
        s.sqrt_recipm1_alphas_cumprod, t, n
    ) * eps


def split_prediction(
    out: torch.Tensor, xt: torch.Tensor, abar: torch.Tensor, kind: str = "epsilon"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from a network output at x_t = √ᾱ x_0 + √(1-ᾱ) ε, whatever the network predicts.

    ``kind`` is diffusers' ``prediction_type``; ``abar`` is ᾱ at x_t's timestep (a scalar tensor
    or one that broadcasts against x_t); ``out`` has x_t's channels (no variance half). The one
    place sampling converts parameterisations; :func:`predict_x0_from_eps` is the ε case indexed
    by a :class:`Schedule`, as the variational bound needs it.
    """
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if kind == "v_prediction":
        # Salimans & Ho 2022, Sec. 4: v = √ᾱ ε - √(1-ᾱ) x_0, so x_0 = √ᾱ x_t - √(1-ᾱ) v, ε = √ᾱ v + √(1-ᾱ) x_t
        return a * xt - s * out, a * out + s * xt
    if kind == "sample":
        # x̂_0 predicted directly; ε̂ from DDPM Eq. 4 solved for ε
        return out, (xt - a * out) / s
    # DDPM Eq. 15: x̂_0 = (x_t - √(1-ᾱ) ε_θ) / √ᾱ
    return (xt - s * out) / a, out


def ddim_move(x0: torch.Tensor, eps: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    """DDIM with η = 0 (Song et al. 2021, Eq. 12): x_τ' = √ᾱ_τ' x̂_0 + √(1-ᾱ_τ') ε̂.

    The same update moves down the grid (sampling) or up it (inversion, Eq. 13 read forwards).
    """
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


# --- reverse process ---------------------------------------------------------------------


def learned_range_log_variance(s: Schedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log Σ_θ from the raw network output v ∈ [-1, 1] (improved-diffusion's learned_range).

    v = -1 gives the lower bound log β̃_t (clipped at t = 0), v = +1 the upper bound log β_t.
    """
    n = v.ndim
    min_log = extract(s.posterior_log_variance_clipped, t, n)
    max_log = extract(s.log_betas, t, n)
    frac = (v + 1) / 2
    # iDDPM Eq. 15: Σ_θ = exp(frac · log β_t + (1 - frac) · log β̃_t)
    return frac * max_log + (1 - frac) * min_log


def p_mean_variance(
    s: Schedule,
    model_output: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    clip_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, log-variance and x̂_0 of p_θ(x_{t-1} | x_t) (DDPM Eq. 1, iDDPM Eq. 2).

    ``model_output`` is ``[ε, v]`` (2C channels, learned range, iDDPM Eq. 15) or just ε
    (C channels: fixed small variance β̃_t, DDPM Sec. 3.2, σ_t² = β̃_t). With ``clip_x0``
    x̂_0 is clamped to [-1, 1] before it enters the posterior mean (sampling and
    evaluation); training passes False, as improved-diffusion does.
    """
    c = xt.shape[1]
    if model_output.shape[1] == 2 * c:
        eps, v = model_output[:, :c], model_output[:, c:]
        log_variance = learned_range_log_variance(s, v, t)
    elif model_output.shape[1] == c:
        eps = model_output
        log_variance = extract(s.posterior_log_variance_clipped, t, xt.ndim).expand(xt.shape)
    else:
        raise ValueError(
            f"model_output has {model_output.shape[1]} channels; expected {c} (ε) or {2 * c} (ε, v)"
        )
    pred_x0 = predict_x0_from_eps(s, xt, t, eps)
    if clip_x0:
        pred_x0 = pred_x0.clamp(-1.0, 1.0)
    # μ_θ = μ̃_t(x_t, x̂_0): iDDPM Eq. 11 with x̂_0; unclipped it equals DDPM Eq. 11 / iDDPM
    # Eq. 13, μ_θ = (x_t - β_t/√(1-ᾱ_t) ε_θ) / √α_t.
    mean, _, _ = q_posterior_mean_variance(s, pred_x0, xt, t)
    return mean, log_variance, pred_x0


# --- likelihood terms ---------------------------------------------------------------------


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats; broadcasts."""
    ref = next(x for x in (mean1, logvar1, mean2, logvar2) if torch.is_tensor(x))
    mean1, logvar1, mean2, logvar2 = (
        x if torch.is_tensor(x) else torch.tensor(x, dtype=ref.dtype, device=ref.device)
        for x in (mean1, logvar1, mean2, logvar2)
    )
    # KL of diagonal Gaussians, the closed form behind DDPM Eq. 5 / iDDPM Eq. 5:
    # ½ (-1 + log σ₂² - log σ₁² + σ₁²/σ₂² + (μ₁-μ₂)²/σ₂²)
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the approximation in DDPM's code.

    (From PixelCNN++'s discretised logistic code; max abs error ≈ 2e-4 vs the exact Φ.)
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log p(x) in nats of x ∈ [-1, 1] on 256 bins under N(means, e^{2 log_scales}).

    DDPM Eq. 13: p(x) = ∫_{δ-(x)}^{δ+(x)} N(y; μ, σ²) dy with δ± = x ± 1/255, except
    δ+ = +∞ at x = 1 and δ- = -∞ at x = -1 (the edge bins are open-ended), so the 256
    bin probabilities sum to one.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))  # Φ((δ+ - μ)/σ)
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))  # Φ((δ- - μ)/σ)
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))  # bin x = -1: (-∞, δ+]
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))  # bin x = 1: [δ-, ∞)
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))  # inner bins
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def vlb_terms(
    s: Schedule,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    *,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Per-sample L_t of the variational bound, in bits per dimension, shape (N,).

    iDDPM Eq. 5: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t)) for t > 0,
    iDDPM Eq. 4: L_0 = -log p_θ(x_0 | x_1) (the discretised decoder, DDPM Eq. 13) at t = 0.
    ``clip_x0`` defaults to False as in improved-diffusion's training losses; its bpd
    evaluation (``calc_bpd_loop``) clips.
    """
    true_mean, _, true_log_variance = q_posterior_mean_variance(s, x0, xt, t)
    mean, log_variance, _ = p_mean_variance(s, model_output, xt, t, clip_x0=clip_x0)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / _LN2
    decoder_nll = -mean_flat(
        discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * log_variance)
    ) / _LN2
    return torch.where(t.to(kl.device) == 0, decoder_nll, kl)


def hybrid_loss_terms(
    s: Schedule,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    vlb_weight: float = 0.001,
    num_timesteps: int | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`hybrid_loss` and its parts, each per sample (N,): ``loss``, ``mse``, ``vb``.

    ``vb`` is the unscaled L_t in bits/dim; ``loss = mse + vlb_weight · T · vb``.
    """
    c = x0.shape[1]
    if model_output.shape[1] != 2 * c:
        raise ValueError(
            f"hybrid_loss needs a learned-variance output with {2 * c} channels [ε, v], "
            f"got {model_output.shape[1]}"
        )
    eps, v = model_output[:, :c], model_output[:, c:]
    # DDPM Eq. 14, iDDPM Eq. 14: L_simple = ||ε - ε_θ(x_t, t)||², here a mean over C, H, W
    mse = mean_flat((noise - eps) ** 2)
    # iDDPM Sec. 3.1: "stop-gradient to the μ_θ(x_t, t) output for the L_vlb term",
    # so L_vlb trains only Σ_θ (v) and L_simple remains the only signal for the mean.
    frozen = torch.cat([eps.detach(), v], dim=1)
    vb = vlb_terms(s, frozen, x0, xt, t, clip_x0=False)
    T = s.num_timesteps if num_timesteps is None else int(num_timesteps)
    # iDDPM Eq. 16: L_hybrid = L_simple + λ L_vlb, with L_vlb = Σ_t L_t (iDDPM Eq. 3).
    # Under uniform t, T · L_t is the unbiased one-sample estimate of L_vlb, hence
    # λ · T · L_t; with λ = 0.001 this is improved-diffusion's RESCALED_MSE
    # (terms["vb"] *= num_timesteps / 1000.0), its default for learned sigmas.
    loss = mse + vlb_weight * T * vb
    return {"loss": loss, "mse": mse, "vb": vb}


def hybrid_loss(
    s: Schedule,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    vlb_weight: float = 0.001,
    num_timesteps: int | None = None,
) -> torch.Tensor:
    """Per-sample L_hybrid = L_simple + λ · T · L_t (iDDPM Sec. 3.1, Eq. 16), shape (N,).

    * L_simple: mean over C, H, W of (ε - ε_θ)², DDPM Eq. 14.
    * L_t: :func:`vlb_terms` in bits/dim, computed with the ε half of ``model_output``
      detached (stop-gradient on μ_θ), so it trains only the variance half v.
    * λ = ``vlb_weight`` (0.001 in the paper); T = ``num_timesteps`` (default: the
      schedule's length). The paper's L_vlb is the *sum* Σ_t L_t, whose one-sample
      estimate under uniform t is T · L_t, so the per-sample term is λ · T · L_t. With
      the defaults this is exactly improved-diffusion's ``mse + vb · T / 1000``. Pass
      ``num_timesteps`` for a respaced process (improved-diffusion uses the respaced
      length there).
    * With an :class:`ImportanceSampler`, multiply by its weights before the batch mean.
    """
    return hybrid_loss_terms(s, model_output, x0, xt, t, noise, vlb_weight, num_timesteps)["loss"]


# --- importance sampling of t -----------------------------------------------------------


class ImportanceSampler:
    """Loss-aware timestep sampling, iDDPM Sec. 3.3 (improved-diffusion's LossSecondMomentResampler).

    iDDPM Eq. 18: L_vlb = E_{t∼p_t}[L_t / p_t] with p_t ∝ √E[L_t²], E[L_t²] estimated from
    the last ``history`` losses seen at each t. Until every t has ``history`` values the
    distribution is uniform; afterwards p = (1 - u) · p_loss + u / T with u = ``uniform_prob``.
    :meth:`sample` returns weights 1 / (T p_t) so that E_t∼p[w_t · L_t] = E_t∼uniform[L_t]:
    multiply the per-sample loss by them before averaging and the objective is unchanged.

    Feed :meth:`update` the per-sample losses (detached) of the samples drawn; improved-
    diffusion feeds the total training loss. Under data parallelism every rank must call
    :meth:`update` with the same all-gathered values so that all ranks stay identical.
    The state is plain tensors and ints (:meth:`state_dict`), so it can be checkpointed
    with safetensors + JSON; exact resume also needs the caller's generator state.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        if int(num_timesteps) < 1:
            raise ValueError("num_timesteps must be at least 1")
        if int(history) < 1:
            raise ValueError("history must be at least 1")
        if not 0.0 <= float(uniform_prob) <= 1.0:
            raise ValueError("uniform_prob must lie in [0, 1]")
        self.num_timesteps = int(num_timesteps)
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self._loss_history = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64)
        self._loss_counts = torch.zeros(self.num_timesteps, dtype=torch.int64)

    @property
    def warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history).all())

    def probabilities(self) -> torch.Tensor:
        """p_t, a float64 CPU tensor of length T summing to one."""
        T = self.num_timesteps
        if not self.warmed_up:
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        w = torch.sqrt(torch.mean(self._loss_history**2, dim=-1))  # √E[L_t²], iDDPM Eq. 18
        total = w.sum()
        if not bool(total > 0):  # all recorded losses are zero: nothing to prefer
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        p = w / total
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / T

    def sample(
        self, batch_size: int, generator: torch.Generator, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, weights)``: int64 timesteps ~ p_t and float32 weights 1 / (T p_t), on ``device``.

        Randomness comes only from ``generator`` (drawn on the generator's device).
        """
        T = self.num_timesteps
        gen_device = generator.device
        if not self.warmed_up:
            t = torch.randint(0, T, (batch_size,), generator=generator, device=gen_device)
            weights = torch.ones(batch_size, dtype=torch.float32)
        else:
            p = self.probabilities()
            t = torch.multinomial(p.to(gen_device), batch_size, replacement=True, generator=generator)
            weights = (1.0 / (T * p[t.cpu()])).to(torch.float32)
        return t.to(device=device, dtype=torch.long), weights.to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample ``losses`` at timesteps ``t`` (1-D, same length; any device).

        Keeps the last ``history`` values per t; non-finite losses are ignored.
        """
        ts = torch.as_tensor(t).detach().reshape(-1).cpu().tolist()
        ls = torch.as_tensor(losses).detach().reshape(-1).to("cpu", torch.float64).tolist()
        if len(ts) != len(ls):
            raise ValueError(f"{len(ts)} timesteps but {len(ls)} losses")
        for ti, loss in zip(ts, ls):
            ti = int(ti)
            if not 0 <= ti < self.num_timesteps:
                raise ValueError(f"timestep {ti} outside [0, {self.num_timesteps})")
            if not math.isfinite(loss):
                continue
            count = int(self._loss_counts[ti])
            if count == self.history:  # full: shift out the oldest value
                self._loss_history[ti, :-1] = self._loss_history[ti, 1:].clone()
                self._loss_history[ti, -1] = loss
            else:
                self._loss_history[ti, count] = loss
                self._loss_counts[ti] = count + 1

    def state_dict(self) -> dict[str, torch.Tensor | list | int]:
        """Tensors (float64 history, int64 counts) and ints; no pickle needed.

        ``uniform_prob`` is configuration, like the constructor's other arguments, and
        is not part of the state.
        """
        return {
            "loss_history": self._loss_history.clone(),
            "loss_counts": self._loss_counts.clone(),
            "num_timesteps": self.num_timesteps,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; tensors may also arrive as (JSON) lists."""
        T, h = int(state["num_timesteps"]), int(state["history"])
        if (T, h) != (self.num_timesteps, self.history):
            raise ValueError(
                f"sampler state is for num_timesteps={T}, history={h}; this sampler has "
                f"num_timesteps={self.num_timesteps}, history={self.history}"
            )
        history = torch.as_tensor(state["loss_history"], dtype=torch.float64).cpu().clone()
        counts = torch.as_tensor(state["loss_counts"], dtype=torch.int64).cpu().clone()
        if tuple(history.shape) != (T, h) or tuple(counts.shape) != (T,):
            raise ValueError(
                f"sampler state has loss_history {tuple(history.shape)} and loss_counts "
                f"{tuple(counts.shape)}; expected ({T}, {h}) and ({T},)"
            )
        if bool(((counts < 0) | (counts > h)).any()):
            raise ValueError(f"sampler state has loss_counts outside [0, {h}]")
        self._loss_history = history
        self._loss_counts = counts
