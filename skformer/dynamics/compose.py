"""Composing single-trial denoisers into the denoiser of N iid trials.

With trials ``x_1..x_N`` independent given the latent ``theta``, Bayes' rule gives
``p(theta | x_1..x_N) ∝ p(theta)^(1-N) prod_j p(theta | x_j)``, so at noise level 0 the
posterior score is the sum of the single-trial posterior scores minus ``N - 1`` prior scores.
At positive noise levels that sum is not the score of the noised posterior (noising does not
commute with products); following Linhart et al. (2024, "Diffusion posterior sampling for
simulation-based inference in tall data settings"), each factor's denoising distribution is
taken to be Gaussian, which makes the composition exact for Gaussian factors:

    s = Λ^-1 (Σ_j W_j s_j - (N - 1) W_0 s_0),   W = P + σ^-2 I,   Λ = Σ_j W_j - (N - 1) W_0,

with ``P_j`` the precision of the single-trial posterior ``j`` and ``P_0`` that of the prior.
Two guards make it hold for any prior (sbi's version gives NaN for uniform priors when the
estimated ``Λ`` is not positive definite): the precisions are written ``P_j = P_0 + L_j``
with each trial's information ``L_j`` projected onto the positive semi-definite matrices, so
``Λ = P_0 + Σ_j L_j + σ^-2 I`` is always positive definite.

Everything here works in the VE form every dynamics presents (:mod:`skformer.dynamics.base`):
with ``s = (D - x) / σ^2`` the composed denoiser is ``D = x + σ^2 s``, so score and flow
models compose alike and the solvers never know. Methods:

``"gauss"``
    The Gaussian-corrected composition above (default).
``"fnpe"``
    The plain sum, ``D = Σ_j D_j - (N - 1) D_0`` (Geffner et al. 2023, "Compositional score
    modeling for simulation-based inference"): exact at noise level 0, biased above it.

Prior denoisers for known priors (standardised units): :func:`gaussian_prior_denoiser` and
:func:`uniform_prior_denoiser` are exact for a Gaussian and a box-uniform prior;
:func:`prior_denoiser` builds one from a ``torch.distributions`` object. Only Gaussian priors
are composed with a model's posteriors: a uniform prior's exact score is a wall at its edges
that learnt single-trial posteriors never match exactly, and the composition multiplies that
mismatch by ``N - 1`` (samples diverge); the model's own prior (the default) is learnt with
its posteriors and has matching edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["IID_METHODS", "Composition", "precision_of", "gaussian_prior_denoiser",
           "uniform_prior_denoiser", "prior_denoiser"]

IID_METHODS = ("gauss", "fnpe")

LatentDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x (n, d), sigma) -> D (n, d)`` over the latent columns, standardised units."""


def precision_of(samples: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Precision matrix (inverse covariance) of samples of shape (..., m, d), float64.

    A relative ridge keeps it finite when a direction barely varies.
    """
    s = samples.to(torch.float64)
    centred = s - s.mean(-2, keepdim=True)
    cov = centred.mT @ centred / max(1, s.shape[-2] - 1)
    d = cov.shape[-1]
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return torch.linalg.inv(cov + ridge * scale[..., None, None] * eye)


def _information(trial: torch.Tensor, prior: torch.Tensor, floor: float) -> torch.Tensor:
    """Each trial's information ``P_j - P_0``, kept positive semi-definite: in the prior's
    whitened coordinates, eigenvalues below ``floor`` (negative ones, and estimation noise of
    that relative size) are set to 0."""
    vals0, vecs0 = torch.linalg.eigh(prior)
    root = (vecs0 * vals0.clamp(min=1e-12).sqrt()[None, :]) @ vecs0.mT  # P_0^(1/2)
    inv_root = (vecs0 * vals0.clamp(min=1e-12).rsqrt()[None, :]) @ vecs0.mT
    white = inv_root @ (trial - prior) @ inv_root
    vals, vecs = torch.linalg.eigh(0.5 * (white + white.mT))
    vals = torch.where(vals > floor, vals, 0.0)
    return root @ ((vecs * vals[..., None, :]) @ vecs.mT) @ root


class Composition:
    """The composed denoiser's arithmetic for ``N`` trials.

    Parameters
    ----------
    method : {"gauss", "fnpe"}
    n_trials : int
    trial_precisions : tensor of shape (N, d, d), optional
        Precisions of the single-trial posteriors (needed by "gauss").
    prior_precision : tensor of shape (d, d), optional
        Precision of the prior (needed by "gauss").
    noise_floor : float, default=0.0
        Information a trial adds below this share of the prior's precision (per whitened
        direction) is taken as estimation noise and dropped: otherwise noise in directions the
        trials do not inform adds up over the N trials.
    """

    def __init__(self, method: str, n_trials: int, trial_precisions: torch.Tensor | None = None,
                 prior_precision: torch.Tensor | None = None, noise_floor: float = 0.0):
        if method not in IID_METHODS:
            raise ValueError(f"iid_method must be one of {IID_METHODS}; got {method!r}.")
        if n_trials < 1:
            raise ValueError(f"need at least one trial; got {n_trials}.")
        self.method, self.n_trials = method, int(n_trials)
        if method == "gauss":
            if trial_precisions is None or prior_precision is None:
                raise ValueError('iid_method="gauss" needs the trial and prior precisions.')
            p0 = 0.5 * (prior_precision + prior_precision.mT).to(torch.float64)
            self.prior_precision = p0
            self.information = _information(trial_precisions.to(torch.float64), p0,
                                            noise_floor)  # L_j

    def _weights(self, sigma: float, device) -> torch.Tensor:
        """``Λ^-1 W_j`` for the trials and ``Λ^-1 W_0`` for the prior: (N + 1, d, d)."""
        d = self.prior_precision.shape[-1]
        inv_var = torch.eye(d, dtype=torch.float64, device=self.prior_precision.device)
        inv_var = inv_var / max(sigma, 1e-12) ** 2
        w0 = self.prior_precision + inv_var
        w = torch.cat([w0 + self.information, w0[None]])  # W_j = P_0 + L_j + σ^-2 I
        lam = w0 + self.information.sum(0)
        return torch.linalg.solve(lam, w).to(device=device, dtype=torch.float32)

    def __call__(self, x: torch.Tensor, trials: torch.Tensor, prior: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
        """Composed denoiser output.

        x : (n, d) noisy latent values; trials : (N, n, d) single-trial denoiser outputs;
        prior : (n, d) the prior's denoiser output; sigma : scalar noise level.
        Returns (n, d).
        """
        k = self.n_trials - 1
        if self.method == "fnpe":
            return trials.sum(0) - k * prior
        m = self._weights(float(sigma.reshape(-1)[0]), x.device)
        step = torch.einsum("jnd,jed->ne", trials - x, m[:-1])
        return x + step - k * (prior - x) @ m[-1].mT


# ---------------------------------------------------------------------- known priors
def gaussian_prior_denoiser(mean: torch.Tensor, cov: torch.Tensor) -> LatentDenoiser:
    """Exact denoiser of a Gaussian prior ``N(mean, cov)``: ``mean + cov (cov + σ² I)^-1
    (x - mean)``."""
    mean, cov = mean.to(torch.float64), cov.to(torch.float64)
    eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = float(sigma.reshape(-1)[0]) ** 2
        gain = torch.linalg.solve(cov + s2 * eye, cov)  # symmetric inverse times cov
        out = mean + (x.to(torch.float64) - mean) @ gain
        return out.to(x.dtype)

    return denoise


def uniform_prior_denoiser(low: torch.Tensor, high: torch.Tensor) -> LatentDenoiser:
    """Exact denoiser of a box-uniform prior on ``[low, high]`` (per column): the mean of
    ``N(x, σ²)`` truncated to the box, computed in log space so that points far outside the box
    stay finite."""
    low, high = low.to(torch.float64), high.to(torch.float64)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma.reshape(-1)[0])
        z = x.to(torch.float64)
        a, b = (low - z) / s, (high - z) / s
        # reflect so that the box lies on the left-tail side, where log_ndtr is accurate
        flip = (a + b) > 0
        a2, b2 = torch.where(flip, -b, a), torch.where(flip, -a, b)
        # with r(t) = phi(t) / Phi(t) = sqrt(2 / pi) / erfcx(-t / sqrt 2) (no overflow) and
        # q = Phi(a) / Phi(b): E[shift] = (phi(a) - phi(b)) / (Phi(b) - Phi(a))
        #                              = (r(a) q - r(b)) / (1 - q)
        log_q = torch.special.log_ndtr(a2) - torch.special.log_ndtr(b2)
        ratio = lambda t: math.sqrt(2 / math.pi) / torch.special.erfcx(-t / math.sqrt(2))  # noqa: E731
        shift = (ratio(a2) * torch.exp(log_q) - ratio(b2)) / -torch.expm1(log_q)
        shift = torch.where(flip, -shift, shift)
        return (z + s * shift).clamp(low, high).to(x.dtype)

    return denoise


def _moments(dist) -> tuple[str, torch.Tensor, torch.Tensor]:
    """("gaussian", mean, cov) or ("uniform", low, high) of a supported distribution."""
    from torch import distributions as D

    base, ndims = dist, 0
    while isinstance(base, D.Independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if isinstance(base, D.MultivariateNormal):
        return "gaussian", base.loc.reshape(-1), base.covariance_matrix
    if isinstance(base, D.Normal):
        return "gaussian", base.loc.reshape(-1), torch.diag(base.scale.reshape(-1) ** 2)
    if isinstance(base, D.Uniform):
        return "uniform", base.low.reshape(-1), base.high.reshape(-1)
    raise TypeError(
        "prior must be a torch.distributions Normal, MultivariateNormal or Uniform (or an "
        f"Independent of one, e.g. sbi's BoxUniform); got {type(dist).__name__}. Leave "
        "prior=None to use the model's own prior (the marginal it learnt)."
    )


def prior_denoiser(dist, mean: torch.Tensor, scale: torch.Tensor, bounded: bool = False
                   ) -> tuple[LatentDenoiser, torch.Tensor]:
    """The exact denoiser and the precision of a known prior, in standardised units.

    dist : a torch distribution over the latent columns in data units (event shape (d,));
    mean, scale : (d,) the standardiser's mean and scale of those columns (float64);
    bounded : accept a uniform prior (for exact use; composing it with learnt posteriors is
    refused, see the error).
    Returns ``(denoiser, precision (d, d) float64)``.
    """
    kind, p, q = _moments(dist)
    d = mean.shape[0]
    if p.numel() == 1 and d > 1:  # one scalar distribution for every column
        p = p.expand(d).clone()
        q = q.expand(d).clone() if kind == "uniform" else torch.eye(d) * q.reshape(())
    if p.shape[0] != d:
        raise ValueError(f"the prior has {p.shape[0]} dimensions but the conditional {d} "
                         "latent columns.")
    p, q = p.to(mean.device, torch.float64), q.to(mean.device, torch.float64)
    if kind == "gaussian":
        m = (p - mean) / scale
        cov = q / scale[:, None] / scale[None, :]
        return gaussian_prior_denoiser(m, cov), torch.linalg.inv(cov)
    low, high = (p - mean) / scale, (q - mean) / scale
    if not bool((high > low).all()):
        raise ValueError("the uniform prior needs high > low in every column.")
    if not bounded:
        raise ValueError(
            "a bounded (uniform) prior cannot be composed with a learnt posterior: its exact "
            "score is a wall at the edges that the network's single-trial posteriors never "
            "match exactly, and iid composition multiplies the mismatch by N - 1 (measured: "
            "samples diverge). Leave prior=None: the model's own prior, learnt with its "
            "posteriors, has matching edges."
        )
    return uniform_prior_denoiser(low, high), torch.diag(12.0 / (high - low) ** 2)
