"""Score-based dynamics: denoising score matching with EDM preconditioning.

Following Karras et al. (NeurIPS 2022), with data standardised to unit variance,

    c_skip = 1 / (sigma^2 + 1),  c_out = sigma / sqrt(sigma^2 + 1),
    c_in = 1 / sqrt(sigma^2 + 1),  c_noise = log(sigma) / 4,

and ``F`` regresses ``(sigma x0 - eps) / sqrt(sigma^2 + 1)``: noise prediction at small sigma,
data prediction at large sigma, unit-scale targets everywhere. The score is
``(D - x) / sigma^2`` and the probability-flow ODE is ``dx/dsigma = (x - D) / sigma``.

Two forward SDEs share this form (Song et al., ICLR 2021): the variance-exploding SDE, where
sigma is the time, and the variance-preserving SDE, which is the same process after rescaling
``x / alpha(t)`` with ``sigma(t)^2 = exp(beta_min t + beta_d t^2 / 2) - 1``. They differ in the
noise levels seen in training and the grid used in sampling.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from skformer.dynamics.base import Dynamics

__all__ = ["ScoreDynamics"]


class ScoreDynamics(Dynamics):
    """Denoising score matching for the VE or VP SDE.

    Parameters
    ----------
    sde : {"ve", "vp"}
        Variance-exploding (noise levels log-normal in training, log-uniform grid in sampling)
        or variance-preserving (uniform time in training and sampling).
    sigma_min, sigma_max : float
        Noise range of the VE grid (standardised units).
    p_mean, p_std : float
        Training noise levels (VE): log(sigma) ~ N(p_mean, p_std^2).
    beta_min, beta_d, t_eps : float
        The VP schedule ``sigma(t)^2 = exp(beta_min t + beta_d t^2 / 2) - 1`` on
        ``t in [t_eps, 1]``.
    stratified : bool
        Training noise levels one per stratum of a batch (see
        :class:`~skformer.dynamics.base.Dynamics`).
    """

    name = "score"

    def __init__(self, sde: str = "ve", sigma_min: float = 1e-3, sigma_max: float = 40.0,
                 p_mean: float = -1.2, p_std: float = 1.4, beta_min: float = 0.1,
                 beta_d: float = 19.9, t_eps: float = 1e-3, stratified: bool = False):
        if sde not in ("ve", "vp"):
            raise ValueError(f"sde must be 've' or 'vp'; got {sde!r}.")
        super().__init__(sigma_min, sigma_max, stratified)
        for name, v in (("p_std", p_std), ("beta_min", beta_min), ("beta_d", beta_d)):
            if not 0 < v < math.inf:
                raise ValueError(f"{name} must be positive and finite; got {v!r}.")
        if not math.isfinite(p_mean):
            raise ValueError(f"p_mean must be finite; got {p_mean!r}.")
        if not 0 < t_eps < 1:
            raise ValueError(f"t_eps must lie in (0, 1); got {t_eps!r}.")
        self.sde = sde
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.beta_min, self.beta_d, self.t_eps = float(beta_min), float(beta_d), float(t_eps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sde": self.sde, "p_mean": self.p_mean, "p_std": self.p_std,
                "beta_min": self.beta_min, "beta_d": self.beta_d, "t_eps": self.t_eps}

    # ------------------------------------------------------------------ preconditioning
    def preconditioning(self, sigma):
        c_in = torch.rsqrt(sigma**2 + 1)
        return c_in**2, sigma * c_in, c_in, torch.log(sigma) / 4

    def target(self, x0, eps, sigma):
        s = sigma[:, None]
        return (s * x0 - eps) * torch.rsqrt(s**2 + 1)

    # ------------------------------------------------------------------ noise levels
    def _vp_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(self.beta_min * t + 0.5 * self.beta_d * t**2))

    @property
    def sigma_start(self) -> float:
        if self.sde == "ve":
            return self.sigma_max
        return float(self._vp_sigma(torch.tensor(1.0, dtype=torch.float64)))

    def training_sigmas(self, n, gen):
        if self.sde == "ve":
            return torch.exp(self.p_mean + self.p_std * self._normal(n, gen))
        u = self._uniform(n, gen)
        return self._vp_sigma(self.t_eps + (1 - self.t_eps) * u)

    def time_grid(self, steps, device):
        """VE: uniform in log(sigma) (see :class:`Dynamics`). VP: uniform in its time, then 0."""
        if self.sde == "ve":
            return super().time_grid(steps, device)
        t = 1 - torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1) * (1 - self.t_eps)
        sig = self._vp_sigma(t)
        return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=torch.float32)
