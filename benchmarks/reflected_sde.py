"""A screen, not a skformer option: score matching under a *reflected* forward process.

A bounded column's noisy value is the clean one plus noise, folded back into the column's box
(reflected Brownian motion, Lou & Ermon, "Reflected diffusion models", ICML 2023). Its density
at every noise level lives on the box and is flat across the edges (a Neumann boundary), so the
network never has to learn the cut at the edge that a plain forward process smooths, and the
sampler never leaves the box.

- Training: ``y = x0 + sigma eps`` folded to ``x = fold(y)``; the target score is that of the
  folded kernel, the sum over every pre-image ``y_k`` of ``x`` (its translates by twice the
  box's width, and their mirrors) of ``N(y_k; x0, sigma^2)``. The network regresses, as usual,
  the EDM target of a denoiser ``D = x + sigma^2 score``; on a column without a box it is
  ``x0`` (the usual objective).
- Sampling: the unchanged solvers run in the unfolded coordinate ``y``, whose density is the
  box's density extended by reflection (even and periodic, smooth thanks to the flat edges).
  The denoiser at ``y`` is the network's at ``fold(y)``, its step turned by the fold's slope
  (+1 or -1): ``D(y) = y + J(y) (D(fold y) - fold y)``; on a bounded column the network
  predicts a scaled score (:class:`ReflectedScore`). The samples are folded at the end
  (``support="fold"``).

Only the score method's VE SDE (the default) and only sampling: ``log_prob`` of a reflected
model is not defined here. Used by ``support.py --settings reflected`` and by the harness's
``--skformer reflected=true`` (with ``bounds=prior support=fold``). Screened on the box-edge
case and not adopted: docs/concepts.md, "Known support".
"""

from __future__ import annotations

import math

import numpy as np
import torch

from skformer import SimformerEstimator
from skformer.conditional import resolve_bounds
from skformer.dynamics.base import _fixed, masked_mean
from skformer.dynamics.score import ScoreDynamics

MAX_IMAGES = 400
"""At most this many pre-images on each side of a folded value in the kernel's sum; the sum
keeps enough to cover 6 standard deviations of the batch's widest noise."""


def fold(y: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """``(fold(y), slope)``: ``y`` reflected into ``[low, high]`` per column (columns whose
    bounds are infinite pass through, slope 1)."""
    boxed = torch.isfinite(low) & torch.isfinite(high)
    if not bool(boxed.any()):
        return y, torch.ones_like(y)
    lo = torch.where(boxed, low, 0.0).to(y.dtype)
    width = torch.where(boxed, high - low, 1.0).to(y.dtype)
    u = torch.remainder(y - lo, 2 * width)
    x = torch.where(boxed, lo + width - (u - width).abs(), y)
    slope = torch.where(boxed & (u > width), -1.0, 1.0).to(y.dtype)
    return x, slope


def reflected_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                   low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``sigma^2`` times the score at ``x`` (in the box) of the folded kernel started at
    ``x0``, per entry; 0 where a column has no box (the caller uses ``x0 - x`` there)."""
    boxed = torch.isfinite(low) & torch.isfinite(high)
    lo = torch.where(boxed, low, 0.0).to(x.dtype)
    width = torch.where(boxed, high - low, 1.0).to(x.dtype)
    narrowest = float(width[boxed].min()) if bool(boxed.any()) else 1.0
    images = min(MAX_IMAGES, math.ceil(6 * float(sigma.max()) / (2 * narrowest)) + 2)
    k = torch.arange(-images, images + 1, device=x.device, dtype=x.dtype)
    shift = 2 * width[..., None] * k  # (..., columns, images)
    ys = torch.cat([x[..., None] + shift, (2 * lo - x)[..., None] + shift], -1)
    slopes = torch.cat([torch.ones_like(k), -torch.ones_like(k)])
    s2 = (sigma**2)[:, None, None]
    logw = -((ys - x0[..., None]) ** 2) / (2 * s2)
    w = torch.softmax(logw, -1)
    return torch.where(boxed, (w * slopes * (x0[..., None] - ys)).sum(-1), 0.0)


class ReflectedScore(ScoreDynamics):
    """:class:`~skformer.dynamics.ScoreDynamics` (VE) whose bounded columns diffuse reflected
    in their box; ``low`` / ``high`` (standard units, one per column, infinite where none) are
    set once the model's standardiser is known.

    A reflected value stays in its box however large the noise, so EDM's preconditioning
    (inputs scaled by ``1 / sigma``, a denoiser that tends to the mean) does not fit it: on a
    bounded column the network reads ``x / sqrt(1 + min(sigma^2, w^2 / 12))`` (``w`` the box's
    width) and predicts ``sigma^2`` times the score divided by ``c = sigma exp(-(pi sigma /
    w)^2 / 2)`` (at least ``sigma / 1000``), which keeps the target near unit size at every
    noise level: ``D = x + c F``. Unbounded columns
    keep EDM's."""

    low: torch.Tensor | None = None
    high: torch.Tensor | None = None

    def _box(self, like: torch.Tensor):
        low, high = self.low.to(like.device), self.high.to(like.device)
        return low, high, torch.isfinite(low) & torch.isfinite(high)

    def _inputs(self, x, sigma, fixed, boxed):
        """The network's input and noise level, EDM's ``c_skip`` and ``c_out``, and the bounded
        columns' output scale."""
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        low, high, _ = self._box(x)
        width = torch.where(boxed, high - low, 1.0)
        s = sigma[:, None]
        c_box = torch.rsqrt(1 + torch.minimum(s**2, width**2 / 12))  # a uniform's variance
        x_in = torch.where(boxed, x * c_box, x * c_in[:, None])
        # sigma times the score fades like the box's first cosine mode once the noise is as
        # wide as the box: scale the target by it, so that it stays of unit size
        fade = torch.exp(-((math.pi * s / width) ** 2) / 2).clamp(min=1e-3)
        return torch.where(fixed, x, x_in), c_skip, c_out, c_noise, s * fade

    def loss(self, net, x0, observed, edges, sigma, eps):
        low, high, boxed = self._box(x0)
        fixed = _fixed(observed)
        y = x0 + sigma[:, None] * eps
        x, _ = fold(y, low, high)
        x = torch.where(fixed, x0, x)
        x_in, _, _, c_noise, c_box = self._inputs(x, sigma, fixed, boxed)
        target = torch.where(boxed, reflected_step(x, x0, sigma, low, high) / c_box,
                             self.target(x0, eps, sigma))
        out = net(x_in, c_noise, observed, edges)
        return masked_mean((out - target) ** 2, ~fixed)

    def denoise(self, net, y, sigma, observed, edges):
        low, high, boxed = self._box(y)
        fixed = _fixed(observed)
        x, slope = fold(y, low, high)
        x = torch.where(fixed, y, x)
        x_in, c_skip, c_out, c_noise, c_box = self._inputs(x, sigma, fixed, boxed)
        out = net(x_in, c_noise, observed, edges)
        d = torch.where(boxed, y + slope * c_box * out,
                        c_skip[:, None] * y + c_out[:, None] * out)
        return torch.where(fixed, y, d)


class ReflectedEstimator(SimformerEstimator):
    """The estimator with :class:`ReflectedScore` for ``method="score"`` (VE): give it
    ``bounds`` and ``support="fold"``."""

    def _make_dynamics(self):
        dynamics = super()._make_dynamics()
        if not isinstance(dynamics, ScoreDynamics) or dynamics.sde != "ve":
            raise ValueError("the reflected screen needs method='score' with the VE SDE.")
        return ReflectedScore(**dynamics.config())

    def _build_model(self, X, layout, seeds, positions=None):
        model = super()._build_model(X, layout, seeds, positions)
        n = layout.n_columns
        low, high = np.full(n, -np.inf), np.full(n, np.inf)
        for c, (lo, hi) in resolve_bounds(self.bounds, layout).items():
            low[c], high[c] = lo, hi
        st = model.standardiser
        mean, scale = st.mean.cpu().numpy(), st.scale.cpu().numpy()
        model.dynamics.low = torch.as_tensor((low - mean) / scale, dtype=torch.float32)
        model.dynamics.high = torch.as_tensor((high - mean) / scale, dtype=torch.float32)
        return model


def _check() -> None:
    """The folded kernel's step is the plain one far from the edges, and flat at an edge."""
    low, high = torch.tensor([0.0]), torch.tensor([1.0])
    x0 = torch.tensor([[0.5]])
    step = reflected_step(torch.tensor([[0.52]]), x0, torch.tensor([0.01]), low, high)
    assert math.isclose(float(step), -0.02, abs_tol=1e-6)
    flat = reflected_step(torch.tensor([[0.0]]), torch.tensor([[0.01]]), torch.tensor([0.05]),
                          low, high)
    assert abs(float(flat)) < 1e-6, float(flat)
    y = torch.tensor([[-0.25], [1.25], [2.25]])
    x, slope = fold(y, low, high)
    assert torch.allclose(x, torch.tensor([[0.25], [0.75], [0.25]])), x
    assert slope.flatten().tolist() == [-1.0, -1.0, 1.0]


if __name__ == "__main__":
    _check()
    print("ok")
