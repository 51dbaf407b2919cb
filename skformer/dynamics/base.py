"""What every dynamics shares: the variance-exploding view used by the solvers.

Solvers see ``x = x0 + sigma * eps`` and a denoiser ``D(x, sigma)``; sampling starts from the
Gaussian ``N(0, sigma_start^2 + 1)`` (data standardised to unit variance) and walks down a grid
uniform in ``log sigma``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["VEForm"]


class VEForm:
    """Noise grid and prior in variance-exploding form.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Ends of the sampling grid (standardised units).
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 40.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    @property
    def sigma_start(self) -> float:
        return self.sigma_max

    def time_grid(self, steps: int, device) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels, uniform in log(sigma), the last one 0.

        The exponential-integrator solver is exact on log-linear stretches and most accurate on
        this grid for conditionals of any width.
        """
        frac = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_start)
        sig = torch.exp(hi + frac * (lo - hi))
        return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=torch.float32)

    def prior_sample(self, shape, gen, device) -> torch.Tensor:
        std = math.sqrt(self.sigma_start**2 + 1.0)
        return std * torch.randn(shape, generator=gen, device=device)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, (sigma_start^2 + 1) I) summed over the last axis."""
        var = self.sigma_start**2 + 1.0
        return -0.5 * (z**2 / var + math.log(2 * math.pi * var)).sum(-1)

    def to_dict(self) -> dict:
        """Constructor arguments, for persistence."""
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
