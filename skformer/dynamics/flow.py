"""Flow matching on the straight path between data and noise.

Conditional flow matching (Lipman et al., ICLR 2023; Liu et al., ICLR 2023) with the path
``x_t = (1 - t) x0 + t eps``: the network regresses the velocity ``v = eps - x0`` on latent
entries, seeing ``x_t`` scaled to unit variance. Training times are logit-normal (Esser et al.
2024): ``logit(t) ~ N(p_mean, p_std^2)``, which is exactly the score method's log-normal noise
levels, since ``logit(t) = log(sigma)``, with a share ``uniform_fraction`` drawn uniformly; or
all uniform. Logit-normal is the default because uniform times put little weight on the low
noise levels where a posterior's fine structure is learnt: on two_moons and gaussian_mixture at
10,000 simulations uniform times left flow 0.06-0.08 C2ST behind the score method (see
docs/benchmarks.md). The uniform share keeps the high noise levels, where sampling starts,
learnt: unlike the score method's denoiser, an untrained velocity does not fall back to the
data mean there, and a short training of a tiny model without that share scored C2ST 0.85
against 0.69 with it (``benchmarks/training_budget.py``, variants ``tiny30*``; docs/speed.md).

In variance-exploding form the path is ``x = x_t / (1 - t) = x0 + sigma eps`` with
``sigma = t / (1 - t)``, and the velocity gives the denoiser ``D = x_t - t v``; in the paper
names of :mod:`skformer.dynamics.base`

    c_skip = 1 / (1 + sigma) = 1 - t,  c_out = -sigma / (1 + sigma) = -t,
    c_in = 1 / sqrt(1 + sigma^2),  c_noise = 4 t - 2,

and the target of ``F = v`` is ``eps - x0``. The shared solvers then integrate the same ODE the
velocity field defines.
"""

from __future__ import annotations

import math

import torch

from skformer.dynamics.base import Dynamics

__all__ = ["FlowDynamics"]


class FlowDynamics(Dynamics):
    """Flow matching with logit-normal (default) or uniform training times.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Ends of the sampling grid in VE form (``t = sigma / (1 + sigma)``).
    time_sampling : {"logit-normal", "uniform"}
        How training times are drawn (uniform: the default up to skformer 0.2.0; models saved
        with it keep it).
    p_mean, p_std : float
        ``logit(t) ~ N(p_mean, p_std^2)`` for "logit-normal".
    uniform_fraction : float in [0, 1]
        For "logit-normal": the share of training times drawn uniformly instead.
    stratified : bool
        Training times one per stratum of a batch (see
        :class:`~skformer.dynamics.base.Dynamics`).
    """

    name = "flow"

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 40.0,
                 time_sampling: str = "logit-normal", p_mean: float = -1.2, p_std: float = 1.4,
                 uniform_fraction: float = 0.25, stratified: bool = False):
        super().__init__(sigma_min, sigma_max, stratified)
        if time_sampling not in ("uniform", "logit-normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit-normal'; got "
                             f"{time_sampling!r}.")
        if not (math.isfinite(p_mean) and 0 < p_std < math.inf):
            raise ValueError(f"p_mean must be finite and p_std positive; got {p_mean!r}, "
                             f"{p_std!r}.")
        if not 0 <= uniform_fraction <= 1:
            raise ValueError(f"uniform_fraction must be in [0, 1]; got {uniform_fraction!r}.")
        self.time_sampling = time_sampling
        self.uniform_fraction = float(uniform_fraction)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def config(self):
        return {**super().config(), "time_sampling": self.time_sampling, "p_mean": self.p_mean,
                "p_std": self.p_std, "uniform_fraction": self.uniform_fraction}

    def preconditioning(self, sigma):
        t = sigma / (1 + sigma)
        return 1 - t, -t, torch.rsqrt(sigma**2 + 1), 4 * t - 2

    def target(self, x0, eps, sigma):
        return eps - x0

    def training_sigmas(self, n, gen):
        t = self._uniform(n, gen)
        uniform = t / (1 - t)
        if self.time_sampling == "uniform":
            return uniform
        z = self._normal(n, gen)
        sigma = torch.exp(self.p_mean + self.p_std * z)
        if self.uniform_fraction > 0:
            pick = torch.rand(n, generator=gen, device=gen.device) < self.uniform_fraction
            sigma = torch.where(pick, uniform, sigma)
        return sigma
