"""The API of sbi's Simformer tutorial, over :class:`~skformer.SimformerEstimator`.

``Simformer`` / ``FlowMatchingSimformer`` take and return torch tensors and keep the tutorial's
method names, so the tutorial runs with only its import lines changed::

    inference = Simformer()
    inference.append_simulations(inputs)          # (n, n_variables, n_features)
    inference.train(max_num_epochs=100)
    conditional = inference.build_conditional(condition_mask=[False, True])
    samples = conditional.sample((10000,), x=x_o)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Independent, Uniform

from skformer._utils import resolve_device
from skformer.estimator import SimformerEstimator

__all__ = ["Simformer", "FlowMatchingSimformer", "BoxUniform", "TorchConditional"]


class BoxUniform(Independent):
    """Uniform prior on a box, as ``sbi.utils.BoxUniform``.

    Parameters
    ----------
    low, high : tensor of shape (dim,)
    device : str, default="cpu"
        "cpu", "cuda", "cuda:1", or "gpu" (the first GPU); an absent GPU falls back to the CPU
        with a warning.

    Examples
    --------
    >>> import torch
    >>> prior = BoxUniform(-torch.ones(2), torch.ones(2))
    >>> prior.sample((4,)).shape
    torch.Size([4, 2])
    """

    def __init__(self, low, high, reinterpreted_batch_ndims: int = 1, device: str = "cpu"):
        dev = resolve_device(device)
        low = torch.as_tensor(low, dtype=torch.float32, device=dev)
        high = torch.as_tensor(high, dtype=torch.float32, device=dev)
        super().__init__(Uniform(low, high), reinterpreted_batch_ndims)


class TorchConditional:
    """A :class:`~skformer.Conditional` with sbi's calling convention and torch tensors.

    ``sample(sample_shape, x=...)`` and ``log_prob(values, x=...)``; ``x`` holds the observed
    values (flattened, or shaped like the observed variables).
    """

    def __init__(self, conditional):
        self.conditional = conditional

    def __repr__(self) -> str:
        return f"TorchConditional({self.conditional!r})"

    @staticmethod
    def _x(x):
        if x is None:
            return None, torch.device("cpu")
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return arr.reshape(-1), device

    def sample(self, sample_shape=(1,), x=None, **kwargs) -> torch.Tensor:
        """Samples of shape ``(*sample_shape, n_latent_columns)`` given observed ``x``.

        As in sbi, an ``x`` of shape (N, n_observed_columns) with N > 1 rows is a set of N
        iid trials: the samples are drawn given all of them (``Conditional.sample(...,
        iid=True)``; ``iid_method`` and ``prior`` pass through as keyword arguments).
        """
        shape = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
        n = int(np.prod(shape)) if shape else 1
        k = len(self.conditional.observed_columns)
        if x is not None and getattr(x, "ndim", 0) == 2 and x.shape[0] > 1 and x.shape[1] == k:
            device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
            trials = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            out = self.conditional.sample(n, trials, iid=True, **kwargs)
            return torch.as_tensor(out, dtype=torch.float32).reshape(*shape, -1).to(device)
        obs, device = self._x(x)
        out = self.conditional.sample(n, obs, **kwargs)
        return torch.as_tensor(out, dtype=torch.float32).reshape(*shape, -1).to(device)

    def log_prob(self, values, x=None, norm_posterior: bool = True, **kwargs) -> torch.Tensor:
        """Log density of latent ``values`` (shape (n, n_latent_columns)) given ``x``.
        ``norm_posterior`` (sbi's name): renormalise for the mass outside the estimator's
        ``bounds`` (``Conditional.log_prob``'s ``normalise``)."""
        obs, device = self._x(x)
        v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        v = np.asarray(v).reshape(-1, self.conditional.n_latent)
        out = self.conditional.log_prob(v, obs, normalise=norm_posterior, **kwargs)
        return torch.as_tensor(out, dtype=torch.float32, device=device)


class Simformer:
    """sbi's ``Simformer`` API over a :class:`~skformer.SimformerEstimator` (score method).

    Parameters
    ----------
    prior : ignored
        Accepted for sbi compatibility; the Simformer learns from the simulations alone.
    posterior_latent_idx, posterior_observed_idx : list of int, optional
        Variables that ``build_posterior`` treats as latent and observed.
    device : str, default="auto"
    **estimator_params
        Any other :class:`~skformer.SimformerEstimator` parameter (``d_model``, ...).

    Attributes
    ----------
    estimator : SimformerEstimator
    """

    _method = "score"

    def __init__(self, prior=None, posterior_latent_idx=None, posterior_observed_idx=None,
                 device: str = "auto", **estimator_params):
        self.prior = prior
        self.estimator = SimformerEstimator(
            method=self._method,
            posterior_latent=posterior_latent_idx,
            posterior_observed=posterior_observed_idx,
            device=device,
            **estimator_params,
        )
        self._inputs: list[torch.Tensor] = []

    def append_simulations(self, inputs, condition_masks=None, edge_masks=None):
        """Add simulations of shape (n, n_variables, n_features) or (n, n_variables).

        ``condition_masks`` / ``edge_masks``, when given, set the training-time masks (see
        :class:`~skformer.SimformerEstimator`). Returns self.
        """
        try:
            t = torch.as_tensor(inputs).detach()
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"inputs must be a tensor or array of numbers of shape (n, "
                             f"n_variables[, n_features]); got {type(inputs).__name__}.") from err
        if t.ndim not in (2, 3) or t.shape[0] == 0:
            raise ValueError(f"inputs must have shape (n, n_variables) or (n, n_variables, "
                             f"n_features) with n >= 1; got {tuple(t.shape)}.")
        if self._inputs and t.shape[1:] != self._inputs[0].shape[1:]:
            raise ValueError(
                f"inputs of shape {tuple(t.shape)} do not match earlier simulations "
                f"(n, {', '.join(map(str, self._inputs[0].shape[1:]))})."
            )
        masks = {k: v for k, v in (("condition_masks", condition_masks),
                                    ("edge_masks", edge_masks)) if v is not None}
        self._set_checked(masks)
        self._inputs.append(t.cpu())
        return self

    def _set_checked(self, params: dict) -> dict:
        """``set_params(**params)`` on the estimator, validated; on a refusal the parameters
        are put back and the error raised. Returns the parameters as they were."""
        before = self.estimator.get_params(deep=False)
        try:
            self.estimator.set_params(**params)
            self.estimator._validate_params()
        except Exception:
            self.estimator.set_params(**before)
            raise
        return before

    def train(self, max_num_epochs: int | None = None, training_batch_size: int | None = None,
              learning_rate: float | None = None, validation_fraction: float | None = None,
              stop_after_epochs: int | None = None, show_train_summary: bool = False, **kwargs):
        """Fit on all appended simulations; returns the trained network."""
        if not self._inputs:
            raise ValueError("no simulations: call append_simulations(inputs) before train().")
        params = {}
        for name, value in [("max_epochs", max_num_epochs),
                            ("batch_size", training_batch_size), ("learning_rate", learning_rate),
                            ("validation_fraction", validation_fraction),
                            ("n_iter_no_change", stop_after_epochs)]:
            if value is not None:
                params[name] = value
        before = self._set_checked({**params, **kwargs})
        X = torch.cat(self._inputs)
        if X.ndim == 2:
            X = X[:, :, None]
        try:
            self.estimator.fit(X)
        except Exception:  # a refused fit changes nothing: its parameters neither
            self.estimator.set_params(**before)
            raise
        if show_train_summary:
            est = self.estimator
            print(  # noqa: T201 -- asked for by the caller
                f"epochs: {est.n_iter_}, best validation loss: "
                f"{min(est.validation_scores_ or est.loss_curve_):.4f}"
            )
        return self.estimator.network_

    def build_conditional(self, condition_mask, edge_mask=None) -> TorchConditional:
        """The conditional for ``condition_mask`` (True = observed, one per variable)."""
        return TorchConditional(self.estimator.condition(_np(condition_mask), _np(edge_mask)))

    def build_posterior(self, edge_mask=None) -> TorchConditional:
        return TorchConditional(self.estimator.posterior(_np(edge_mask)))

    def build_likelihood(self, edge_mask=None) -> TorchConditional:
        return TorchConditional(self.estimator.likelihood(_np(edge_mask)))

    def set_condition_indexes(self, new_posterior_latent_idx=None,
                              new_posterior_observed_idx=None):
        self.estimator.set_condition_indexes(new_posterior_latent_idx, new_posterior_observed_idx)
        return self


class FlowMatchingSimformer(Simformer):
    """As :class:`Simformer`, trained by flow matching (``method="flow"``)."""

    _method = "flow"


def _np(mask):
    if mask is None:
        return None
    return mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask
