"""The contract every generative dynamics fulfils, and what they all share.

Every dynamics presents its model in variance-exploding (VE) form: noisy values are
``x = x0 + sigma * eps`` and the network ``F`` is wrapped as a denoiser (Karras et al.,
"Elucidating the design space of diffusion-based generative models", NeurIPS 2022)

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),

an estimate of x0. A dynamics chooses the four preconditioning functions, the noise levels seen
in training, the network's regression target and the sampling grid. The loss is the same for
all: the squared error of ``F`` against its target, on latent entries only, which equals
``||D - x0||^2 / c_out^2``. The solvers (:mod:`skformer.dynamics.solvers`) only see ``D``.

Observed entries stay clean (noise level 0), enter the network unscaled, pass through ``D``
unchanged and carry no loss.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch

__all__ = ["Dynamics", "masked_mean"]


def _fixed(observed: torch.Tensor) -> torch.Tensor:
    """Entries that are not latent: observed ones (bool True, or state 1) and missing ones."""
    return observed if observed.dtype == torch.bool else observed != 0


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-row mean of ``values`` over the entries where ``keep`` is True.

    values, keep : tensors of shape (batch, tokens); rows with nothing kept give 0.
    """
    keep = keep.to(values.dtype)
    return (values * keep).sum(-1) / keep.sum(-1).clamp(min=1)


class Dynamics(abc.ABC):
    """A generative method in VE form: preconditioning, training noise, target, sampling grid.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Ends of the sampling grid, in standardised units (data have unit variance).
    stratified : bool, default=False
        Draw a training batch's noise levels one per stratum of their distribution (in a
        random order) rather than independently: every batch then spans the noise levels
        evenly, and the loss of a step varies less.

    Every constructor argument of a subclass is returned by :meth:`config`, so that
    ``type(d)(**d.config())`` rebuilds it (persistence stores the config).
    """

    name: ClassVar[str]
    """The name the estimator's ``method`` parameter uses."""

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 40.0,
                 stratified: bool = False):
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max < inf; got {sigma_min!r} and {sigma_max!r}."
            )
        if not isinstance(stratified, bool):
            raise ValueError(f"stratified must be True or False; got {stratified!r}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.stratified = stratified

    # ------------------------------------------------------------------ what a method chooses
    @abc.abstractmethod
    def preconditioning(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` of shape (batch,)."""

    @abc.abstractmethod
    def training_sigmas(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` noise levels for training rows, shape (n,), on ``gen``'s device."""

    @abc.abstractmethod
    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What ``F`` regresses: ``(x0 - c_skip x) / c_out`` for ``x = x0 + sigma eps``, in a
        closed form that does not cancel. x0, eps : (batch, tokens); sigma : (batch,)."""

    @property
    def sigma_start(self) -> float:
        """Noise level where sampling starts."""
        return self.sigma_max

    def time_grid(self, steps: int, device) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels from :attr:`sigma_start`, the last one 0.

        Uniform in log(sigma) down to ``sigma_min``: the exponential-integrator solver is exact
        on log-linear stretches and most accurate on this grid for conditionals of any width.
        """
        frac = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_start)
        sig = torch.exp(hi + frac * (lo - hi))
        return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=torch.float32)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON values), for persistence."""
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "stratified": self.stratified}

    # ------------------------------------------------------------------ training draws
    def _uniform(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` draws of U(0, 1); with :attr:`stratified`, one in each of n equal strata, in a
        random order (the batch then covers the whole range, whatever its size)."""
        u = torch.rand(n, generator=gen, device=gen.device)
        if not self.stratified:
            return u
        strata = torch.randperm(n, generator=gen, device=gen.device).to(u.dtype)
        return (strata + u) / n

    def _normal(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` draws of N(0, 1), stratified like :meth:`_uniform` when asked."""
        if not self.stratified:
            return torch.randn(n, generator=gen, device=gen.device)
        return torch.special.ndtri(self._uniform(n, gen).clamp(1e-7, 1 - 1e-7))

    # ------------------------------------------------------------------ shared by every method
    def prior_sample(self, shape, gen: torch.Generator) -> torch.Tensor:
        """Noise at :attr:`sigma_start`: ``N(0, sigma_start^2 + 1)`` (unit-variance data)."""
        std = math.sqrt(self.sigma_start**2 + 1.0)
        return std * torch.randn(shape, generator=gen, device=gen.device)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, (sigma_start^2 + 1) I) summed over the last axis."""
        var = self.sigma_start**2 + 1.0
        return -0.5 * (z**2 / var + math.log(2 * math.pi * var)).sum(-1)

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor, observed: torch.Tensor,
                edges: torch.Tensor | None) -> torch.Tensor:
        """D(x; sigma) on latent entries; observed (and missing) entries pass through.

        x : (batch, tokens); sigma : (batch,) positive; observed : (batch, tokens) or
        (tokens,), bool or the network's uint8 column states; edges : bool attention mask or
        None (see the network).
        """
        fixed = _fixed(observed)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        x_in = torch.where(fixed, x, x * c_in[:, None])
        out = net(x_in, c_noise, observed, edges)
        return torch.where(fixed, x, c_skip[:, None] * x + c_out[:, None] * out)

    def loss(self, net, x0: torch.Tensor, observed: torch.Tensor, edges: torch.Tensor | None,
             sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-row mean squared error of ``F`` against :meth:`target` over latent entries
        (observed and missing entries carry none).

        x0, eps : (batch, tokens), standardised data (0 where missing) and unit noise;
        sigma : (batch,).
        Returns a tensor of shape (batch,).
        """
        fixed = _fixed(observed)
        _, _, c_in, c_noise = self.preconditioning(sigma)
        x = x0 + sigma[:, None] * eps
        x_in = torch.where(fixed, x0, x * c_in[:, None])
        out = net(x_in, c_noise, observed, edges)
        return masked_mean((out - self.target(x0, eps, sigma)) ** 2, ~fixed)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.config() == other.config()

    __hash__ = None
