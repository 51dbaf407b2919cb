"""One fitted model seen through one condition mask and one edge mask.

:class:`Conditional` is what ``SimformerEstimator.condition(mask)`` returns: a light object with
``sample`` (and, where the dynamics support it, ``log_prob``) that takes observed values in the
user's units and returns latent values in the user's units. It holds references to the fitted
network and never changes the estimator that made it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from skformer._utils import as_float_tensor, make_generator, seed_from, to_numpy
from skformer.dynamics.solvers import SOLVERS, log_density, network_calls, solve
from skformer.guidance import LinearConstraints, parse_constraints, sample_satisfying
from skformer.layout import Layout

__all__ = ["Conditional", "FittedModel"]


@dataclass(frozen=True)
class FittedModel:
    """What inference needs from a fitted estimator (tensors live on ``device``)."""

    network: torch.nn.Module
    dynamics: object
    layout: Layout
    mean: torch.Tensor  # (n_columns,)
    scale: torch.Tensor  # (n_columns,)
    device: torch.device
    sampling_steps: int
    solver: str
    log_prob_steps: int = 20

    def rows_per_chunk(self) -> int:
        """Rows per network call that keep attention activations to a few hundred MB."""
        T = self.layout.n_columns
        return max(64, int(2**22 // (T * max(T, 64))))


class Conditional:
    """The conditional distribution of the latent columns given the observed ones.

    Attributes
    ----------
    condition_mask : ndarray of shape (n_columns,)
        Column condition mask, True = observed.
    edge_mask : ndarray of shape (n_columns, n_columns) or None
        Column attention mask, None = full attention.
    latent_columns, observed_columns : ndarray of int
        Indexes of the latent / observed columns of the joint vector, in order. Samples have
        one column per entry of ``latent_columns``; ``observed`` values one per entry of
        ``observed_columns``. Columns in neither are marginalised out (sampled, not returned).
    latent_names, observed_names : list of str
        Column names in the same order, for labelling plots.
    """

    def __init__(self, model: FittedModel, condition_mask: np.ndarray, edge_mask, returned=None):
        self._model = model
        self.condition_mask = np.asarray(condition_mask, dtype=bool)
        self.edge_mask = edge_mask
        # Latent columns not returned are sampled jointly and dropped: marginalised out.
        self._sampled_columns = np.flatnonzero(~self.condition_mask)
        keep = ~self.condition_mask if returned is None else ~self.condition_mask & returned
        self.latent_columns = np.flatnonzero(keep)
        self.observed_columns = np.flatnonzero(self.condition_mask)
        names = model.layout.column_names
        self.latent_names = [names[i] for i in self.latent_columns]
        self.observed_names = [names[i] for i in self.observed_columns]

    def __repr__(self) -> str:
        return (
            f"Conditional(latent={self.latent_names}, observed={self.observed_names}, "
            f"edge_mask={'full' if self.edge_mask is None else 'custom'})"
        )

    @property
    def n_latent(self) -> int:
        return len(self.latent_columns)

    # ------------------------------------------------------------------ validation
    def _observed(self, observed) -> tuple[torch.Tensor, bool]:
        """Validate observed values -> standardised tensor (n_observations, n_observed), batched?"""
        k = len(self.observed_columns)
        m = self._model
        if observed is None:
            if k:
                raise ValueError(
                    f"observed values are required: this conditional observes {k} columns "
                    f"{self.observed_names}."
                )
            return torch.zeros(1, 0, device=m.device), False
        obs = as_float_tensor(observed, m.device)
        batched = obs.ndim == 2
        if obs.ndim == 1:
            obs = obs[None]
        elif obs.ndim != 2 and obs.numel() == k:
            obs, batched = obs.reshape(1, k), False
        if obs.ndim != 2 or obs.shape[1] != k:
            raise ValueError(
                f"observed must have shape ({k},) or (n_observations, {k}) for the observed "
                f"columns {self.observed_names}; got shape {tuple(obs.shape)}."
            )
        if obs.shape[0] == 0:
            raise ValueError("observed holds no observation (0 rows).")
        if not torch.isfinite(obs).all():
            raise ValueError("observed holds non-finite values (NaN or inf).")
        idx = torch.as_tensor(self.observed_columns, device=m.device)
        return (obs - m.mean[idx]) / m.scale[idx], batched

    def _steps_solver(self, steps, solver) -> tuple[int, str]:
        steps = self._model.sampling_steps if steps is None else steps
        solver = self._model.solver if solver is None else solver
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be a positive integer; got {steps!r}.")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}.")
        return int(steps), solver

    # ------------------------------------------------------------------ sampling
    def network_calls(self, steps: int | None = None, solver: str | None = None) -> int:
        """Network evaluations per sample for ``steps`` and ``solver`` (defaults: the model's)."""
        steps, solver = self._steps_solver(steps, solver)
        return network_calls(solver, steps)

    def sample(
        self,
        n_samples: int = 1,
        observed=None,
        *,
        random_state=None,
        steps: int | None = None,
        solver: str | None = None,
        constraints=None,
    ) -> np.ndarray:
        """Draw samples of the latent columns given observed values.

        Parameters
        ----------
        n_samples : int
            Samples per observation.
        observed : array-like of shape (n_observed,) or (n_observations, n_observed)
            Values of the observed columns (``observed_columns`` order), in data units. A 2-D
            array samples every observation at once. Omit when nothing is observed.
        random_state : int, RandomState, Generator or None
            Seed for this call's noise.
        steps : int, optional
            Solver steps (default: the estimator's ``sampling_steps``).
        solver : {"dpm", "heun", "euler", "sde"}, optional
            Probability-flow ODE with DPM-Solver++(3M), Heun or Euler, or the reverse SDE
            (Euler-Maruyama); see :mod:`skformer.dynamics.solvers`. Default: the estimator's
            ``sampler``.
        constraints : dict or list, optional
            Knowledge that some latent (or marginalised) columns only lie in a range:
            ``{column: (low, high)}`` with a column index of the joint vector or a column name
            (``-np.inf`` / ``np.inf`` for one-sided), and / or linear inequalities
            ``(weights, low, high)`` meaning ``low <= weights @ x <= high`` with one weight per
            column of the joint vector (a list of such triples). Sampling is guided towards the
            region (the gradient of a soft indicator of it, taken through the denoiser, is added
            to the score; Gloeckler et al. 2024, sec. 3.4) and samples still outside are
            rejected and redrawn, so every sample returned satisfies the constraints.

        Returns
        -------
        ndarray of shape (n_samples, n_latent), or (n_observations, n_samples, n_latent) for a
        2-D ``observed``.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
        if n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer; got {n_samples}.")
        steps, solver = self._steps_solver(steps, solver)
        obs, batched = self._observed(observed)
        m = self._model
        guide = None if constraints is None else parse_constraints(
            constraints, m.layout.column_names, self.observed_columns, m.mean, m.scale)
        gen = make_generator(seed_from(random_state), m.device)
        if guide is None:
            x = self._sample_standardised(obs, int(n_samples), gen, steps, solver)
        else:
            x = torch.cat([
                sample_satisfying(
                    lambda k, o=o: self._sample_standardised(o[None], k, gen, steps, solver,
                                                             guide),
                    guide, int(n_samples))
                for o in obs
            ])
        x = x * m.scale + m.mean
        idx = torch.as_tensor(self.latent_columns, device=m.device)
        out = to_numpy(x[:, idx]).reshape(obs.shape[0], n_samples, -1)
        return out if batched else out[0]

    def _joint_batch(self, obs_rows, latent_rows, latent_columns):
        """A batch of joint vectors in standardised units with the device masks it needs:
        ``(x (B, n_columns), observed (B, n_columns) bool, edge mask or None)``."""
        m = self._model
        B, T = obs_rows.shape[0], m.layout.n_columns
        x = torch.zeros(B, T, device=m.device)
        x[:, torch.as_tensor(self.observed_columns, device=m.device)] = obs_rows
        x[:, torch.as_tensor(latent_columns, device=m.device)] = latent_rows
        observed = torch.as_tensor(self.condition_mask, device=m.device).expand(B, T)
        edges = None if self.edge_mask is None else torch.as_tensor(self.edge_mask, device=m.device)
        return x, observed, edges

    @torch.no_grad()
    def _sample_standardised(self, obs, n, gen, steps, solver,
                             guide: LinearConstraints | None = None) -> torch.Tensor:
        """Full samples in standardised units: tensor of shape (n_observations * n, n_columns),
        guided towards ``guide``'s region when given."""
        m = self._model
        n_sampled = len(self._sampled_columns)
        grid = m.dynamics.time_grid(steps, m.device)
        rows = obs.repeat_interleave(n, dim=0)
        out = []
        chunk = m.rows_per_chunk()
        for start in range(0, rows.shape[0], chunk):
            r = rows[start : start + chunk]
            B = r.shape[0]
            noise = m.dynamics.prior_sample((B, n_sampled), gen, m.device)
            x, obs_b, edges = self._joint_batch(r, noise, self._sampled_columns)

            def denoise(x, sigma, B=B, obs_b=obs_b, edges=edges):
                return m.dynamics.denoise(m.network, x, sigma.expand(B), obs_b, edges)

            if guide is not None:
                denoise = guide.guide(denoise, obs_b)

            out.append(solve(denoise, x, grid, solver, gen, obs_b))
        return torch.cat(out)

    # ------------------------------------------------------------------ densities
    def _values(self, values, n_obs: int) -> torch.Tensor:
        m = self._model
        v = as_float_tensor(values, m.device)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.n_latent:
            raise ValueError(
                f"values must have shape (n, {self.n_latent}) for the latent columns "
                f"{self.latent_names}; got shape {tuple(v.shape)}."
            )
        if v.shape[0] == 0:
            raise ValueError("values holds no row.")
        if not torch.isfinite(v).all():
            raise ValueError("values holds non-finite values (NaN or inf).")
        if n_obs not in (1, v.shape[0]):
            raise ValueError(
                f"observed has {n_obs} rows but values has {v.shape[0]}: give one observation "
                "for all rows or one per row."
            )
        idx = torch.as_tensor(self.latent_columns, device=m.device)
        return (v - m.mean[idx]) / m.scale[idx]

    def log_prob(
        self,
        values,
        observed=None,
        *,
        steps: int | None = None,
        divergence: str = "auto",
        n_probes: int = 16,
        random_state=0,
    ) -> np.ndarray:
        """Log density of latent values given observed values, by the probability-flow ODE.

        Parameters
        ----------
        values : array-like of shape (n, n_latent) or (n_latent,)
            Latent values in data units (``latent_columns`` order).
        observed : array-like of shape (n_observed,) or (n, n_observed)
            One observation for all rows, or one per row.
        steps : int, optional
            ODE steps (default 20); the solver's error falls as ``steps**-2`` or faster.
        divergence : {"auto", "exact", "hutchinson"}, default="auto"
            Exact trace of the denoiser's Jacobian (one backward pass over ``n_latent`` copies),
            or Hutchinson's estimator with ``n_probes`` Rademacher probes. "auto": exact up to
            16 latent columns.
        random_state : int, default=0
            Seed of the Hutchinson probes (fixed by default, so results are deterministic).
            One set of probes serves every row, so a row's log density never depends on the
            other rows passed with it.

        Returns
        -------
        ndarray of shape (n,)
        """
        if not np.array_equal(self._sampled_columns, self.latent_columns):
            raise ValueError(
                "log_prob needs every latent column: this conditional marginalises "
                f"{sorted(set(self._sampled_columns) - set(self.latent_columns))}; observe them "
                "or build the conditional with condition() to include them."
            )
        if divergence not in ("auto", "exact", "hutchinson"):
            raise ValueError(
                f"divergence must be 'auto', 'exact' or 'hutchinson'; got {divergence!r}."
            )
        steps = self._model.log_prob_steps if steps is None else steps
        steps, _ = self._steps_solver(steps, None)
        if steps < 2:
            raise ValueError(f"log_prob needs steps >= 2; got {steps}.")
        if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
            raise ValueError(f"n_probes must be a positive integer; got {n_probes!r}.")
        exact = divergence == "exact" or (divergence == "auto" and self.n_latent <= 16)
        obs, _ = self._observed(observed)
        z = self._values(values, obs.shape[0])
        if obs.shape[0] == 1:
            obs = obs.expand(z.shape[0], -1)
        m = self._model
        copies = self.n_latent if exact else int(n_probes)
        probes = None
        if not exact:
            # One set of Rademacher probes shared by every row: each row's estimate is unbiased
            # and depends on that row alone, never on the rows around it, their order or the
            # chunking (score_samples on a subset equals the subset of score_samples).
            gen = make_generator(seed_from(random_state), m.device)
            signs = torch.randint(0, 2, (copies, 1, m.layout.n_columns), generator=gen,
                                  device=m.device)
            observed = torch.as_tensor(self.condition_mask, device=m.device)
            probes = (2.0 * signs - 1.0) * (~observed).float()
        chunk = max(1, m.rows_per_chunk() // (2 * copies))
        out = [
            self._log_prob_standardised(z[i : i + chunk], obs[i : i + chunk], steps, probes)
            for i in range(0, z.shape[0], chunk)
        ]
        idx = torch.as_tensor(self.latent_columns, device=m.device)
        return to_numpy(torch.cat(out) - torch.log(m.scale[idx]).sum())

    def _log_prob_standardised(self, z, obs, steps, probes=None) -> torch.Tensor:
        """Log density of standardised rows: exact divergence when ``probes`` is None, else
        Hutchinson's estimator with ``probes`` of shape (n_probes, 1, n_columns)."""
        m = self._model
        B, T = z.shape[0], m.layout.n_columns
        lat = torch.as_tensor(self.latent_columns, device=m.device)
        x, observed, edges = self._joint_batch(obs, z, self.latent_columns)
        k = len(lat)
        exact = probes is None
        if exact:
            copies = k
            # copy i differentiates output lat[i] with respect to input lat[i]
            pick = torch.zeros(k, T, device=m.device)
            pick[torch.arange(k), lat] = 1.0
            probes = pick[:, None, :].expand(k, B, T)
        else:
            copies = probes.shape[0]
            probes = probes.expand(copies, B, T)
        obs_rep = observed.repeat(copies, 1)
        flat_probes = probes.reshape(copies * B, T)

        def denoise_div(x_, sigma):
            with torch.enable_grad():
                xr = x_.detach().repeat(copies, 1).requires_grad_(True)
                d = m.dynamics.denoise(m.network, xr, sigma.expand(copies * B), obs_rep, edges)
                (g,) = torch.autograd.grad((d * flat_probes).sum(), xr)
            trace = (g * flat_probes).sum(-1).view(copies, B)
            trace = trace.sum(0) if exact else trace.mean(0)
            return d[:B].detach(), k - trace

        grid = m.dynamics.time_grid(steps, m.device).flip(0)[1:]  # sigma_min ... sigma_start
        with torch.no_grad():
            x_T, integral = log_density(denoise_div, x, grid)
        return m.dynamics.prior_log_prob(x_T[:, lat]) + integral

    # ------------------------------------------------------------------ mode
    def map(
        self,
        observed=None,
        *,
        n_init: int = 256,
        n_keep: int = 8,
        n_iter: int = 200,
        learning_rate: float = 0.01,
        random_state=None,
    ) -> np.ndarray:
        """Maximum a posteriori estimate of the latent columns given one observation.

        Draws ``n_init`` samples, keeps the ``n_keep`` with the highest (coarse, 8-step)
        log density, climbs each with Adam along the learned score ``(D(x, sigma) - x) /
        sigma^2`` while sigma anneals from 0.5 to 0.02 standardised units (smoothing that
        steadies the score without moving the mode of a Gaussian), and returns the climber with
        the highest log density.

        Parameters
        ----------
        observed : array-like of shape (n_observed,)
        n_init, n_keep, n_iter : int
        learning_rate : float
            Adam step size, in standardised units.
        random_state : int, RandomState, Generator or None

        Returns
        -------
        ndarray of shape (n_latent,)
        """
        for name, v in (("n_init", n_init), ("n_keep", n_keep), ("n_iter", n_iter)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}.")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {learning_rate!r}.")
        obs, batched = self._observed(observed)
        if batched and obs.shape[0] != 1:
            raise ValueError("map takes one observation, shape (n_observed,).")
        m = self._model
        start = self.sample(n_init, observed, random_state=random_state)
        coarse = self.log_prob(start, observed, steps=8)
        best = start[np.argsort(coarse)[::-1][: min(n_keep, n_init)]]
        idx = torch.as_tensor(self.latent_columns, device=m.device)
        z = ((as_float_tensor(best, m.device) - m.mean[idx]) / m.scale[idx]).requires_grad_(True)
        T = m.layout.n_columns
        x = torch.zeros(z.shape[0], T, device=m.device)
        obs_idx = torch.as_tensor(self.observed_columns, device=m.device)
        x[:, obs_idx] = obs[0]
        observed_mask = torch.as_tensor(self.condition_mask, device=m.device).expand_as(x)
        edges = None if self.edge_mask is None else torch.as_tensor(self.edge_mask, device=m.device)
        opt = torch.optim.Adam([z], lr=learning_rate)
        sigmas = np.geomspace(0.5, 0.02, n_iter)
        for sigma in sigmas:
            with torch.no_grad():
                full = x.clone()
                full[:, idx] = z
                s = torch.full((z.shape[0],), float(sigma), device=m.device)
                d = m.dynamics.denoise(m.network, full, s, observed_mask, edges)
                score = (d[:, idx] - z) / sigma**2
            opt.zero_grad()
            z.grad = -score
            opt.step()
        climbed = to_numpy(z.detach() * m.scale[idx] + m.mean[idx])
        final = self.log_prob(climbed, observed)
        return climbed[int(np.argmax(final))]
