"""Solvers that carry noise to samples along a grid of noise levels, and back for densities.

Every dynamics presents its model in variance-exploding form: ``x = x0 + sigma * eps`` and a
denoiser ``D(x, sigma)`` estimating x0. The probability-flow ODE is then
``dx/dsigma = (x - D) / sigma`` and the score is ``(D - x) / sigma^2``, whatever the training
objective. The solvers here only see ``D`` (:data:`SOLVERS` is the one registry of names):

``"dpm"``
    DPM-Solver++(3M) (Lu et al. 2022, multistep, data prediction, exponential integrator in
    ``log sigma``): one network call per step, third order per step once three points are known
    (its two warm-up steps make the global error second order in the limit), so it is accurate
    with few calls even when a conditional is much narrower than the data.
``"heun"`` / ``"euler"``
    Second / first order in ``sigma`` (Karras et al. 2022): two / one calls per step.
``"sde"``
    Euler-Maruyama on the reverse SDE: one call per step, stochastic.

The step into ``sigma = 0`` returns ``D`` itself. Updates touch only latent entries: the
denoiser passes observed entries through unchanged.

Densities (:func:`log_density`) integrate the same ODE from data up to noise together with the
divergence of its vector field (:func:`with_divergence`), by the instantaneous change of
variables ``log p_0(x) = log p_T(x_T) + int div(dx/du) du`` with ``u = log sigma``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["SOLVERS", "ODE_SOLVERS", "network_calls", "solve", "with_divergence",
           "log_density"]

SOLVERS = ("dpm", "heun", "euler", "sde")
"""Names of the sampling solvers."""
ODE_SOLVERS = ("dpm", "heun", "euler")
"""The deterministic ones, which also integrate densities."""

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x, sigma) -> D``: x of shape (batch, tokens), sigma a 0-d tensor."""
DenoiserWithDivergence = Callable[[torch.Tensor, torch.Tensor],
                                  tuple[torch.Tensor, torch.Tensor]]
"""``(x, sigma) -> (D, div)`` with div of shape (batch,)."""


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

    grid : tensor of shape (steps + 1,), decreasing, ending in 0.
    gen : the SDE's noise generator.
    observed : bool mask of entries that get no noise and come out exactly as they went in
        (the solvers' arithmetic would otherwise round them in the last bits).
    """
    if solver == "dpm":
        out = _dpm3m(denoise, x, grid)
    elif solver == "sde":
        out = _euler_maruyama(denoise, x, grid, gen, observed)
    elif solver in ("heun", "euler"):
        out = _heun(denoise, x, grid, second_order=solver == "heun")
    else:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}.")
    return out if observed is None else torch.where(observed, x, out)


def _heun(denoise: Denoiser, x, grid, second_order: bool):
    for i in range(grid.shape[0] - 1):
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


# ---------------------------------------------------------------------------------- densities
def with_divergence(denoise: Denoiser, latent: torch.Tensor,
                    probes: torch.Tensor | None = None) -> DenoiserWithDivergence:
    """Wrap ``denoise`` to also return the divergence of ``dx/du = x - D`` over latent entries.

    ``div = n_latent - tr(dD/dx)`` restricted to the latent entries.

    latent : int tensor of shape (n_latent,), the latent token indexes.
    probes : None for the exact trace (one backward pass over ``n_latent`` copies of the
        batch), or a tensor of shape (n_probes, tokens) for Hutchinson's estimator with those
        probes (zero on observed entries), shared by every row so that a row's estimate never
        depends on the rows around it.
    """
    k = latent.shape[0]
    exact = probes is None

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = x.shape
        if exact:
            # copy i differentiates output latent[i] with respect to input latent[i]
            P = torch.zeros(k, T, device=x.device, dtype=x.dtype)
            P[torch.arange(k, device=x.device), latent] = 1.0
        else:
            P = probes.to(x.dtype)
        copies = P.shape[0]
        flat = P[:, None, :].expand(copies, B, T).reshape(copies * B, T)
        with torch.enable_grad():
            xr = x.detach().repeat(copies, 1).requires_grad_(True)
            d = denoise(xr, sigma)
            (g,) = torch.autograd.grad((d * flat).sum(), xr)
        trace = (g * flat).sum(-1).view(copies, B)
        trace = trace.sum(0) if exact else trace.mean(0)
        return d[:B].detach(), k - trace

    return fn


def log_density(
    denoise_div: DenoiserWithDivergence,
    x: torch.Tensor,
    grid: torch.Tensor,
    solver: str = "dpm",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the probability-flow ODE from data up to noise, with its divergence.

    ``log p_0(x) = log p_T(x_T) + int div(dx/du) du`` with ``u = log sigma``. The path and the
    integral are carried by one ODE solver on the augmented state ``(x, integral)``:

    * ``"dpm"``: the path by DPM-Solver++(3M) steps (as in sampling, here with increasing
      sigma), the integral by the trapezoid rule over the path's points (one extra network
      call at the last one);
    * ``"heun"`` / ``"euler"``: both by Heun's / Euler's rule in ``u``.

    grid : increasing noise levels (the sampling grid reversed, without its 0).

    Returns
    -------
    x_T : tensor of shape (batch, tokens)
    integral : tensor of shape (batch,)
    """
    u = torch.log(grid.double())
    h = (u[1:] - u[:-1]).to(x.dtype)
    if solver == "dpm":
        divs: list[torch.Tensor] = []

        def denoise(x_, sigma):
            d, div = denoise_div(x_, sigma)
            divs.append(div)
            return d

        x_T = _dpm3m(denoise, x, grid)
        denoise(x_T, grid[-1])
        integral = sum(0.5 * h[i] * (divs[i] + divs[i + 1]) for i in range(len(h)))
        return x_T, integral
    if solver not in ("heun", "euler"):
        raise ValueError(f"log densities take a solver among {ODE_SOLVERS}; got {solver!r}.")
    integral = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for i in range(len(h)):
        d, div = denoise_div(x, grid[i])
        f = x - d
        x_next = x + h[i] * f
        if solver == "heun":
            d2, div2 = denoise_div(x_next, grid[i + 1])
            x_next = x + 0.5 * h[i] * (f + x_next - d2)
            div = 0.5 * (div + div2)
        integral = integral + h[i] * div
        x = x_next
    return x, integral
