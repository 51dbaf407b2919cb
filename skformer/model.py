"""The fitted model as one ``nn.Module``: network, dynamics, standardiser and column layout.

:class:`SimformerModel` is what inference and persistence work with below the numpy /
scikit-learn layer. It takes and returns tensors in the user's units on its own device, and
``.to(device)`` moves everything it holds: the network's weights and the standardiser's
buffers. Standardisation happens here (:class:`Standardiser`) and nowhere else.

A condition is a bool tensor of shape (n_columns,), True = observed; an edge mask is a bool
tensor of shape (n_columns, n_columns) or None (full attention). Column masks come from
:class:`~skformer.layout.Layout`, which validates users' masks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from skformer._utils import DTYPE
from skformer.dynamics import Dynamics, make_dynamics
from skformer.dynamics.solvers import Denoiser, log_density, solve, with_divergence
from skformer.guidance import LinearConstraints, sample_satisfying
from skformer.layout import Layout
from skformer.network import MaskedTransformer

__all__ = ["Standardiser", "SimformerModel", "MAX_ARCHITECTURE"]

MAX_ARCHITECTURE = {"d_model": 16_384, "n_layers": 1_024, "n_heads": 1_024}
"""Largest network a description may ask for (checked before anything is allocated)."""


class Standardiser(nn.Module):
    """The per-column affine map to standard units, ``z = (x - mean) / scale``.

    Buffers are float64 so that data far from zero (a mean of 1e6 with a spread of 1e-3)
    keep their resolution; the standardised values are the network's dtype.

    Parameters
    ----------
    mean, scale : tensor of shape (n_columns,)
        ``scale`` positive.
    """

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64).clone())

    @classmethod
    def from_data(cls, X: torch.Tensor) -> Standardiser:
        """Column means and standard deviations of ``X`` (n_rows, n_columns); a column that is
        constant (its spread within 1e-12 of its mean's magnitude) keeps scale 1.

        Each column is divided by its largest magnitude first, so that squares cannot overflow:
        any finite float64 data (1e300 included) gives a finite mean and scale.
        """
        X = X.to(torch.float64)
        peak = X.abs().amax(0).clamp(min=torch.finfo(torch.float64).tiny)
        unit = X / peak
        mean, scale = unit.mean(0) * peak, unit.std(0, correction=0) * peak
        # constant columns (to rounding, relative to their value) keep scale 1; a spread of
        # 1e-39 around 0 is data, not rounding
        scale = torch.where(scale <= 1e-12 * mean.abs(), 1.0, scale)
        if not bool(torch.isfinite(mean).all() and torch.isfinite(scale).all()):
            bad = (~(torch.isfinite(mean) & torch.isfinite(scale))).nonzero().flatten().tolist()
            raise ValueError(f"the mean or spread of columns {bad} is not finite in float64.")
        return cls(mean, scale)

    def _pick(self, columns):
        if columns is None:
            return self.mean, self.scale
        return self.mean[columns], self.scale[columns]

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Data units -> standard units (the network's dtype); ``columns`` selects the columns
        that the last axis of ``x`` holds (default: all, in order)."""
        mean, scale = self._pick(columns)
        return ((x.to(torch.float64) - mean) / scale).to(DTYPE)

    def inverse(self, z: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Standard units -> data units (float64)."""
        mean, scale = self._pick(columns)
        return z.to(torch.float64) * scale + mean

    def log_abs_det(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``log |dz/dx|`` of :meth:`forward` over ``columns``: ``-sum(log scale)``."""
        return -torch.log(self._pick(columns)[1]).sum()


class SimformerModel(nn.Module):
    """A fitted Simformer: masked Transformer, dynamics, standardiser and column layout.

    Parameters
    ----------
    network : MaskedTransformer
    dynamics : Dynamics
    standardiser : Standardiser
    layout : Layout
    """

    def __init__(self, network: MaskedTransformer, dynamics: Dynamics,
                 standardiser: Standardiser, layout: Layout):
        super().__init__()
        self.network = network
        self.standardiser = standardiser
        self.dynamics = dynamics
        self.layout = layout

    @property
    def device(self) -> torch.device:
        return self.standardiser.mean.device

    @property
    def n_columns(self) -> int:
        return self.layout.n_columns

    def rows_per_chunk(self) -> int:
        """Rows per network call that keep attention activations to a few hundred MB."""
        T = self.n_columns
        return max(64, int(2**22 // (T * max(T, 64))))

    # ------------------------------------------------------------------ the denoiser
    def denoiser(self, condition: torch.Tensor, edges: torch.Tensor | None) -> Denoiser:
        """``D(x, sigma)`` in standard units for one condition, for batches of any size."""
        net, dynamics = self.network, self.dynamics

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return dynamics.denoise(net, x, sigma.expand(x.shape[0]), condition, edges)

        return denoise

    def _joint(self, condition, observed_z, latent_z) -> torch.Tensor:
        """Joint vectors in standard units from observed and latent parts."""
        x = torch.zeros(observed_z.shape[0], self.n_columns, device=self.device, dtype=DTYPE)
        x[:, condition] = observed_z
        x[:, ~condition] = latent_z
        return x

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, condition: torch.Tensor, observed: torch.Tensor, n: int, *,
               edges: torch.Tensor | None = None, steps: int, solver: str,
               generator: torch.Generator, guide: LinearConstraints | None = None
               ) -> torch.Tensor:
        """``n`` joint samples per observation, observed entries as given.

        observed : tensor of shape (n_observations, n_observed), data units.
        guide : constraints in standard units (see :mod:`skformer.guidance`), or None.

        Returns a float64 tensor of shape (n_observations, n, n_columns) in data units.
        """
        z = self.standardiser(observed, condition.nonzero().flatten())
        if guide is None:
            x = self._sample_standardised(condition, z, n, edges, steps, solver, generator)
        else:
            x = torch.cat([
                sample_satisfying(
                    lambda k, row=row: self._sample_standardised(
                        condition, row[None], k, edges, steps, solver, generator, guide),
                    guide, n)
                for row in z
            ])
        return self.standardiser.inverse(x).view(z.shape[0], n, self.n_columns)

    def _sample_standardised(self, condition, z_obs, n, edges, steps, solver, gen,
                             guide: LinearConstraints | None = None) -> torch.Tensor:
        """(n_observations * n, n_columns) samples in standard units."""
        grid = self.dynamics.time_grid(steps, self.device)
        rows = z_obs.repeat_interleave(n, dim=0)
        n_latent = int((~condition).sum())
        denoise = self.denoiser(condition, edges)
        if guide is not None:
            denoise = guide.guide(denoise, condition)
        out = []
        for start in range(0, rows.shape[0], self.rows_per_chunk()):
            r = rows[start : start + self.rows_per_chunk()]
            noise = self.dynamics.prior_sample((r.shape[0], n_latent), gen)
            out.append(solve(denoise, self._joint(condition, r, noise), grid, solver, gen,
                             condition))
        return torch.cat(out)

    # ------------------------------------------------------------------ densities
    def log_prob(self, condition: torch.Tensor, values: torch.Tensor, observed: torch.Tensor,
                 *, edges: torch.Tensor | None = None, steps: int, solver: str = "dpm",
                 probes: torch.Tensor | None = None) -> torch.Tensor:
        """Log density of latent ``values`` given ``observed``, by the probability-flow ODE.

        values : tensor of shape (n, n_latent), data units; observed : (n, n_observed) or
        (1, n_observed). probes : None for the exact divergence, or Hutchinson probes of shape
        (n_probes, n_columns) (see :func:`~skformer.dynamics.solvers.with_divergence`).

        Returns a float64 tensor of shape (n,), in the units of ``values``.
        """
        latent = (~condition).nonzero().flatten()
        z = self.standardiser(values, latent)
        o = self.standardiser(observed, condition.nonzero().flatten()).expand(z.shape[0], -1)
        copies = latent.shape[0] if probes is None else probes.shape[0]
        chunk = max(1, self.rows_per_chunk() // (2 * copies))
        denoise_div = with_divergence(self.denoiser(condition, edges), latent, probes)
        grid = self.dynamics.time_grid(steps, self.device).flip(0)[1:]  # sigma_min ... start
        out = []
        for i in range(0, z.shape[0], chunk):
            with torch.no_grad():
                x_T, integral = log_density(
                    denoise_div, self._joint(condition, o[i : i + chunk], z[i : i + chunk]),
                    grid, solver)
            out.append(self.dynamics.prior_log_prob(x_T[:, latent]) + integral)
        return torch.cat(out).double() + self.standardiser.log_abs_det(latent)

    # ------------------------------------------------------------------ mode
    def climb(self, condition: torch.Tensor, observed: torch.Tensor, start: torch.Tensor, *,
              edges: torch.Tensor | None = None, n_iter: int = 200,
              learning_rate: float = 0.01) -> torch.Tensor:
        """Adam ascent of latent ``start`` values along the learned score.

        The score ``(D(x, sigma) - x) / sigma^2`` is taken while sigma anneals from 0.5 to
        0.02 standard units (smoothing that steadies the score without moving the mode of a
        Gaussian). observed : (n_observed,) data units; start : (n, n_latent) data units.
        Returns the climbed values, float64, data units.
        """
        latent = (~condition).nonzero().flatten()
        z = self.standardiser(start, latent).requires_grad_(True)
        o = self.standardiser(observed[None], condition.nonzero().flatten())
        x = self._joint(condition, o.expand(z.shape[0], -1), z.detach())
        denoise = self.denoiser(condition, edges)
        opt = torch.optim.Adam([z], lr=learning_rate)
        for sigma in np.geomspace(0.5, 0.02, n_iter):
            with torch.no_grad():
                x[:, latent] = z
                d = denoise(x, torch.tensor(float(sigma), device=self.device))
                score = (d[:, latent] - z) / sigma**2
            opt.zero_grad()
            z.grad = -score
            opt.step()
        return self.standardiser.inverse(z.detach(), latent)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """What rebuilds this model besides its ``state_dict``: JSON values only."""
        return {
            "layout": self.layout.to_dict(),
            "dynamics": {"method": self.dynamics.name, "config": self.dynamics.config()},
            "network": self.network.config(),
        }

    @classmethod
    def from_description(cls, description: Any, state_dict: dict[str, torch.Tensor],
                         device: torch.device) -> SimformerModel:
        """Rebuild a model from :meth:`describe` and a ``state_dict``; raise ValueError for
        anything inconsistent.

        The architecture is checked against the tensors on the ``meta`` device first, so a
        description asking for a network larger than the weights it comes with allocates
        nothing; the tensors given then become the weights (no initialisation, so the global
        torch RNG is left untouched). The model is in eval mode, without gradients, on
        ``device``.
        """
        if not isinstance(description, dict):
            raise ValueError(f"a model description must be a mapping; got {description!r}.")
        layout = Layout.from_dict(description.get("layout"))
        spec = description.get("dynamics")
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
            raise ValueError(f"dynamics must be a mapping with 'method' and 'config'; got "
                             f"{spec!r}.")
        dynamics = make_dynamics(spec.get("method"), spec["config"])
        arch = description.get("network")
        keys = ("n_tokens", "d_model", "n_layers", "n_heads")
        if not isinstance(arch, dict) or sorted(arch) != sorted(keys) or not all(
                type(arch[k]) is int and arch[k] >= 1 for k in keys):
            raise ValueError(f"the network description needs positive integers {keys}; got "
                             f"{arch!r}.")
        too_big = {k: arch[k] for k, v in MAX_ARCHITECTURE.items() if arch[k] > v}
        if too_big:
            raise ValueError(f"the network asks for {too_big}, beyond the limits "
                             f"{MAX_ARCHITECTURE}.")
        if arch["n_tokens"] != layout.n_columns:
            raise ValueError(f"the network has {arch['n_tokens']} tokens but the layout "
                             f"{layout.n_columns} columns.")
        if arch["d_model"] % arch["n_heads"]:
            raise ValueError(f"d_model ({arch['d_model']}) must be divisible by n_heads "
                             f"({arch['n_heads']}).")
        T = layout.n_columns
        with torch.device("meta"):
            skeleton = cls(MaskedTransformer(**arch), dynamics,
                           Standardiser(torch.zeros(T), torch.ones(T)), layout)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
        got = {k: (tuple(v.shape), v.dtype) for k, v in state_dict.items()}
        if expected != got:
            missing = sorted(set(expected) - set(got))
            unexpected = sorted(set(got) - set(expected))
            wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            raise ValueError(
                f"the weights do not fit a model with network {arch}: missing {missing}, "
                f"unexpected {unexpected}, wrong shape or dtype "
                f"{[(k, expected[k], got[k]) for k in wrong]}."
            )
        bad = [k for k, v in state_dict.items() if v.is_floating_point()
               and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"the weights hold non-finite values in {bad}.")
        scale = state_dict["standardiser.scale"]
        if not bool((scale > 0).all()) or not bool((scale < math.inf).all()):
            raise ValueError(f"standardiser scales must be positive and finite; got "
                             f"{scale.tolist()}.")
        # the checked tensors become the weights: no second initialisation, no RNG use
        skeleton.load_state_dict(state_dict, assign=True)
        return skeleton.to(device).requires_grad_(False).eval()
