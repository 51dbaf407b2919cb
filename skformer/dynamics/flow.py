"""Flow matching on the straight path between data and noise.

Conditional flow matching (Lipman et al., ICLR 2023; Liu et al., ICLR 2023) with the path
``x_t = (1 - t) x0 + t eps``, ``t ~ U(0, 1)``: the network regresses the velocity
``v = eps - x0`` on latent entries, seeing ``x_t`` scaled to unit variance.

In variance-exploding form the path is ``x = x_t / (1 - t) = x0 + sigma eps`` with
``sigma = t / (1 - t)``, and the velocity gives the denoiser ``D = x_t - t v``; in the paper
names of :mod:`skformer.dynamics.base`

    c_skip = 1 / (1 + sigma) = 1 - t,  c_out = -sigma / (1 + sigma) = -t,
    c_in = 1 / sqrt(1 + sigma^2),  c_noise = 4 t - 2,

and the target of ``F = v`` is ``eps - x0``. The shared solvers then integrate the same ODE the
velocity field defines.
"""

from __future__ import annotations

import torch

from skformer.dynamics.base import Dynamics

__all__ = ["FlowDynamics"]


class FlowDynamics(Dynamics):
    """Flow matching with uniform training times.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Ends of the sampling grid in VE form (``t = sigma / (1 + sigma)``).
    """

    name = "flow"

    def preconditioning(self, sigma):
        t = sigma / (1 + sigma)
        return 1 - t, -t, torch.rsqrt(sigma**2 + 1), 4 * t - 2

    def target(self, x0, eps, sigma):
        return eps - x0

    def training_sigmas(self, n, gen):
        t = torch.rand(n, generator=gen, device=gen.device)
        return t / (1 - t)
