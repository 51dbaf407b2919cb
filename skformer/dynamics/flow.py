"""Flow matching on the straight path between data and noise.

Conditional flow matching (Lipman et al., ICLR 2023; Liu et al., ICLR 2023) with the path
``x_t = (1 - t) x0 + t eps``, ``t`` in [0, 1]: the network regresses the velocity
``v = eps - x0`` on latent entries (observed entries stay clean and carry no loss), with input
scaling ``1 / sqrt((1 - t)^2 + t^2)`` so that it sees unit-variance tokens at every t.

For sampling the path is viewed in variance-exploding form: ``x_t / (1 - t) = x0 + sigma eps``
with ``sigma = t / (1 - t)``, and the velocity gives the denoiser ``D = x_t - t v``. The shared
solvers then integrate the same ODE the velocity field defines.
"""

from __future__ import annotations

import torch

from skformer.dynamics.base import VEForm

__all__ = ["FlowDynamics"]


class FlowDynamics(VEForm):
    """Flow matching with uniform training times."""

    name = "flow"

    def train_times(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device)

    def _velocity(self, net, x_t, t, observed, edges):
        s = t[:, None]
        c_in = torch.rsqrt((1 - s) ** 2 + s**2)
        x_in = torch.where(observed, x_t, x_t * c_in)
        return net(x_in, 4 * t - 2, observed, edges)

    def denoise(self, net, x, sigma, observed, edges):
        """D(x; sigma) in variance-exploding form; observed entries pass through."""
        t = sigma / (1 + sigma)
        x_t = torch.where(observed, x, x * (1 - t)[:, None])
        d = x_t - t[:, None] * self._velocity(net, x_t, t, observed, edges)
        return torch.where(observed, x, d)

    def loss(self, net, x0, observed, edges, gen):
        t = self.train_times(x0.shape[0], gen, x0.device)
        eps = torch.randn(x0.shape, generator=gen, device=x0.device)
        return self.loss_at(net, x0, observed, edges, t, eps)

    def loss_at(self, net, x0, observed, edges, t, eps):
        """Per-sample mean squared velocity error over latent entries."""
        s = t[:, None]
        x_t = torch.where(observed, x0, (1 - s) * x0 + s * eps)
        err = (self._velocity(net, x_t, t, observed, edges) - (eps - x0)) ** 2
        latent = (~observed).float()
        return (err * latent).sum(1) / latent.sum(1).clamp(min=1)
