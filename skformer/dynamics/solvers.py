"""Solvers that carry noise to samples along a decreasing grid of noise levels.

Every dynamics presents its model in variance-exploding form: ``x = x0 + sigma * eps`` and a
denoiser ``D(x, sigma)`` estimating x0 (flow matching's straight path is this form after
rescaling). The probability-flow ODE is then ``dx/dsigma = (x - D) / sigma`` and the score is
``(D - x) / sigma^2``, whatever the training objective. The solvers here only see ``D``:

``"dpm"``
    DPM-Solver++(3M) (Lu et al. 2022, multistep, data prediction, exponential integrator in
    ``log sigma``): one network call per step and third order, so it is accurate with few calls
    even when a conditional is much narrower than the data.
``"heun"`` / ``"euler"``
    Second / first order in ``sigma`` (Karras et al. 2022): two / one calls per step.
``"sde"``
    Euler-Maruyama on the reverse SDE: one call per step, stochastic.

The step into ``sigma = 0`` returns ``D`` itself. Updates touch only latent entries: the
denoiser passes observed entries through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["SOLVERS", "network_calls", "solve", "log_density"]

SOLVERS = ("dpm", "heun", "euler", "sde")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def network_calls(solver: str, steps: int) -> int:
    """Network evaluations per sample for ``solver`` over ``steps`` steps."""
    return 2 * steps - 1 if solver == "heun" else steps


def solve(
    denoise: Denoiser,
    x: torch.Tensor,
    grid: torch.Tensor,
    solver: str = "dpm",
    gen: torch.Generator | None = None,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Carry ``x`` from ``grid[0]`` down to ``grid[-1] == 0``.

    denoise : callable (x, sigma) -> D, with x of shape (batch, tokens), sigma a 0-d tensor.
    grid : tensor of shape (steps + 1,), decreasing, ending in 0.
    gen, observed : the SDE's noise generator, and a bool mask of entries that get no noise.
    """
    if solver == "dpm":
        return _dpm3m(denoise, x, grid)
    if solver == "sde":
        return _euler_maruyama(denoise, x, grid, gen, observed)
    return _heun(denoise, x, grid, second_order=solver == "heun")


def _heun(denoise: Denoiser, x, grid, second_order: bool):
    n = grid.shape[0] - 1
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        d = (x - denoise(x, t)) / t
        x_next = x + (t_next - t) * d
        if second_order and float(t_next) > 0:
            d2 = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t) * 0.5 * (d + d2)
        x = x_next
    return x


def _dpm3m(denoise: Denoiser, x, grid):
    """DPM-Solver++(3M) for alpha = 1, lambda = -log(sigma); the grid may also increase."""
    prev: list[torch.Tensor] = []
    hs: list[float] = []
    for i in range(grid.shape[0] - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        d = denoise(x, grid[i])
        if t_next == 0.0:
            return d
        h = math.log(t / t_next)
        ratio = t_next / t
        x_next = ratio * x + (1 - ratio) * d
        phi2 = math.expm1(-h) / h + 1
        if len(prev) >= 2:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d10 = (d - prev[-1]) / r0
            d11 = (prev[-1] - prev[-2]) / r1
            d1 = d10 + (d10 - d11) * r0 / (r0 + r1)
            d2 = (d10 - d11) / (r0 + r1)
            x_next = x_next + phi2 * d1 - (phi2 / h - 0.5) * d2
        elif prev:
            x_next = x_next + phi2 * (d - prev[-1]) / (hs[-1] / h)
        prev = [*prev[-1:], d]
        hs = [*hs[-1:], h]
        x = x_next
    return x


def _euler_maruyama(denoise: Denoiser, x, grid, gen, observed):
    for i in range(grid.shape[0] - 1):
        t, t_next = grid[i], grid[i + 1]
        d = denoise(x, t)
        if float(t_next) == 0.0:
            return d
        var = t**2 - t_next**2
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        if observed is not None:
            noise = noise.masked_fill(observed, 0.0)
        x = x + var * (d - x) / t**2 + torch.sqrt(var) * noise
    return x


def log_density(
    denoise_div: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    grid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the probability-flow ODE from data up to noise, with its divergence.

    ``log p_0(x) = log p_T(x_T) + int div(dx/du) du`` with ``u = log sigma`` and
    ``dx/du = x - D``, so ``div = n_latent - tr(dD/dx)``. The path is carried by the same
    DPM-Solver++(3M) steps as sampling (here with increasing sigma), the divergence integral by
    the trapezoid rule over the path's points (one extra network call at the last one).

    denoise_div : callable (x, sigma) -> (D, div) with div of shape (batch,).
    grid : increasing noise levels, uniform in log(sigma).

    Returns
    -------
    x_T : tensor of shape (batch, tokens)
    integral : tensor of shape (batch,)
    """
    divs: list[torch.Tensor] = []

    def denoise(x_, sigma):
        d, div = denoise_div(x_, sigma)
        divs.append(div)
        return d

    x_T = _dpm3m(denoise, x, grid)
    denoise(x_T, grid[-1])
    u = torch.log(grid.double())
    h = (u[1:] - u[:-1]).to(x.dtype)
    integral = sum(0.5 * h[i] * (divs[i] + divs[i + 1]) for i in range(len(h)))
    return x_T, integral
