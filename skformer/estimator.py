"""SimformerEstimator: the Simformer as a scikit-learn density estimator.

Reads like :class:`sklearn.neighbors.KernelDensity`: parameters are stored by ``__init__``,
``fit`` validates, standardises and hands off to :mod:`skformer.training`, and inference methods
validate their input and delegate to :class:`~skformer.conditional.Conditional`.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skformer._utils import as_float_tensor, make_generator, resolve_device, seed_from
from skformer.conditional import Conditional, FittedModel
from skformer.dynamics import METHODS, make_dynamics
from skformer.dynamics.solvers import SOLVERS
from skformer.layout import Layout
from skformer.masks import CONDITION_MASK_NAMES, condition_sampler, edge_sampler
from skformer.network import MaskedTransformer
from skformer.persistence import PersistenceMixin
from skformer.training import TrainConfig, train

__all__ = ["SimformerEstimator"]


class SimformerEstimator(PersistenceMixin, DensityMixin, BaseEstimator):
    """All-in-one simulation-based inference: one masked Transformer for every conditional.

    Fit on simulations of the joint vector ``[theta, x]``; then ``condition(mask)`` gives any
    conditional (posterior, likelihood, or any other split of the variables) to sample from,
    without retraining (Gloeckler et al., "All-in-one simulation-based inference", ICML 2024).

    Parameters
    ----------
    method : {"score", "flow"}, default="score"
        Generative dynamics: denoising score matching with an SDE, or flow matching.
    sde : {"ve", "vp"}, default="ve"
        Variance-exploding or variance-preserving SDE (``method="score"``).
    variables : list of int, list of lists of int, dict or None, default=None
        How 2-D columns group into variables, the units that masks address: sizes of consecutive
        groups (``[3, 3]``), lists of column indexes, or ``{name: columns}``. None: one variable
        per column. 3-D input ``(n, n_variables, n_features)`` defines the groups by its shape.
    condition_masks : str, callable, array-like or set, default="structured"
        Training-time condition masks (True = observed): "structured" (the paper's mixture of
        joint, posterior, likelihood and random masks), "bernoulli" (each variable observed with
        probability 0.5), a callable ``(torch.Generator, n) -> (n, n_variables)`` bool array, a
        collection of masks (one drawn per sample) or one fixed mask.
    edge_masks : array-like, callable or None, default=None
        Training-time attention masks over variables (``[i, j]`` True: i attends to j): None for
        full attention, one matrix, a collection (one drawn per sample), or a callable of the
        (n, n_variables) condition masks.
    posterior_latent, posterior_observed : list of int or None, default=None
        Variable indexes of theta and x, from the posterior's point of view; used by
        ``posterior()``, ``likelihood()`` and the "structured" masks. None: variable 0 is
        latent and all others observed. A model of a single variable (one column, say) has no
        such split: with both None it learns the joint density, for ``sample`` and
        ``score_samples``.
    d_model, n_layers, n_heads : int, default=64, 4, 4
        Transformer width, depth and attention heads.
    max_epochs : int, default=400
        Maximum passes over the training data; training usually ends earlier, when the
        validation loss has not improved for ``n_iter_no_change`` epochs. 400 because models
        capped at 100 were still improving and clearly undertrained on sbibm tasks
        (``benchmarks/training_budget.py``: two_moons C2ST 0.66 at 100 epochs, 0.53 at 400).
    batch_size : int or "auto", default="auto"
        Rows per optimiser step. "auto": ``min(512, max(32, n_train // 16))``, so small data
        sets still get about 16 steps per epoch and large ones fast epochs.
    learning_rate : float, default=2e-3
        Peak learning rate of AdamW (linear warm-up, cosine decay).
    validation_fraction : float, default=0.1
        Share of rows held out to score epochs; the best epoch's weights are kept.
    early_stopping : bool, default=True
        Stop when the validation loss has not improved by ``tol`` for ``n_iter_no_change``
        epochs.
    n_iter_no_change : int, default=20
    tol : float, default=1e-4
    sampling_steps : int, default=20
        Default solver steps when sampling: one network call per step (Heun: two).
    sampler : {"dpm", "heun", "euler", "sde"}, default="dpm"
        Default solver: the probability-flow ODE with DPM-Solver++(3M), Heun or Euler, or the
        reverse SDE with Euler-Maruyama (see :mod:`skformer.dynamics.solvers`).
    device : str or torch.device, default="auto"
        "auto" (a GPU when present), "cpu", "cuda", "cuda:1", ...
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, data split, shuffling, masks and noise of ``fit``.
    verbose : int, default=0
        Show a progress bar during training when positive.

    Attributes
    ----------
    network_ : torch.nn.Module
        The trained masked Transformer (exponential moving average of the weights).
    layout_ : Layout
        Columns and their grouping into variables.
    mean_, scale_ : ndarray of shape (n_columns,)
        Per-column standardisation learned in fit.
    loss_curve_ : list of float
        Mean training loss per epoch.
    validation_scores_ : list of float
        Validation loss per epoch (empty without a validation set).
    best_epoch_ : int
        Epoch (0-based) whose weights were kept.
    n_iter_ : int
        Epochs run.
    converged_ : bool
        Whether the validation loss settled before ``max_epochs``.
    device_ : torch.device
        Where the network lives.
    n_features_in_ : int
        Number of columns of the joint vector.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when X was a DataFrame with string column names.

    See Also
    --------
    skformer.Conditional : the object ``condition`` returns.
    skformer.Simformer : the sbi-tutorial-compatible facade.

    Examples
    --------
    >>> import numpy as np
    >>> from skformer import SimformerEstimator
    >>> rng = np.random.default_rng(0)
    >>> theta = rng.uniform(-1, 1, size=(500, 2))
    >>> x = theta + 0.1 * rng.standard_normal(theta.shape)
    >>> est = SimformerEstimator(max_epochs=2, d_model=16, n_layers=1, random_state=0)
    >>> est = est.fit(np.stack([theta, x], axis=1))
    >>> est.condition([False, True]).sample(5, observed=[0.2, -0.3]).shape
    (5, 2)
    """

    _parameter_constraints: dict = {
        "method": [StrOptions(set(METHODS))],
        "sde": [StrOptions({"ve", "vp"})],
        "variables": [None, list, tuple, dict],
        "condition_masks": [StrOptions(set(CONDITION_MASK_NAMES)), callable, "array-like", set],
        "edge_masks": [None, callable, "array-like"],
        "posterior_latent": [None, "array-like", Interval(Integral, None, None, closed="neither")],
        "posterior_observed": [None, "array-like", Interval(Integral, None, None, closed="neither")],
        "d_model": [Interval(Integral, 1, None, closed="left")],
        "n_layers": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "sampling_steps": [Interval(Integral, 1, None, closed="left")],
        "sampler": [StrOptions(set(SOLVERS))],
        "device": [str, torch.device, HasMethods("type")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        method="score",
        sde="ve",
        variables=None,
        condition_masks="structured",
        edge_masks=None,
        posterior_latent=None,
        posterior_observed=None,
        d_model=64,
        n_layers=4,
        n_heads=4,
        max_epochs=400,
        batch_size="auto",
        learning_rate=2e-3,
        validation_fraction=0.1,
        early_stopping=True,
        n_iter_no_change=20,
        tol=1e-4,
        sampling_steps=20,
        sampler="dpm",
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.method = method
        self.sde = sde
        self.variables = variables
        self.condition_masks = condition_masks
        self.edge_masks = edge_masks
        self.posterior_latent = posterior_latent
        self.posterior_observed = posterior_observed
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.sampling_steps = sampling_steps
        self.sampler = sampler
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ input handling
    def _validate_X(self, X, reset: bool) -> np.ndarray:
        """2-D or 3-D X (numpy, torch, pandas) -> float64 array of shape (n_samples, n_columns)."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        shape3 = None
        if getattr(X, "ndim", None) == 3:
            shape3 = tuple(X.shape[1:])
            X = np.asarray(X).reshape(X.shape[0], -1)
        if not reset:
            expected = getattr(self, "input_shape_", None)
            if shape3 is not None and expected is not None and shape3 != expected:
                raise ValueError(
                    f"X has shape (n, {shape3[0]}, {shape3[1]}) but the estimator was fitted on "
                    f"(n, {expected[0]}, {expected[1]})."
                )
        # order="C": a reversed or strided view (X[::-1]) becomes a copy torch can wrap;
        # force_writeable: read-only input (joblib memmaps in GridSearchCV(n_jobs=...)) is
        # copied instead of wrapped by torch, which warns about non-writable arrays
        X = validate_data(self, X, reset=reset, dtype=np.float64, order="C",
                          force_writeable=True, ensure_min_samples=1)
        if reset:
            self.input_shape_ = shape3
        return X

    def _make_layout(self, n_columns: int) -> Layout:
        if getattr(self, "input_shape_", None) is not None:
            V, F = self.input_shape_
            if self.variables is not None:
                raise ValueError(
                    "variables applies to 2-D input; 3-D input (n, n_variables, n_features) "
                    "already groups its columns."
                )
            return Layout.from_spec(n_columns, [F] * V)
        names = getattr(self, "feature_names_in_", None)
        spec = self.variables
        if isinstance(spec, dict):
            lookup = {str(n): i for i, n in enumerate(names)} if names is not None else {}

            def col(c):
                if isinstance(c, str):
                    if c not in lookup:
                        raise ValueError(f"variables names column {c!r}, which X does not have.")
                    return lookup[c]
                return int(c)

            groups = [[col(c) for c in np.atleast_1d(cols)] for cols in spec.values()]
            return Layout.from_spec(n_columns, groups, names=list(spec.keys()))
        if spec is None and names is not None:
            return Layout.from_spec(n_columns, None, names=list(names))
        return Layout.from_spec(n_columns, spec)

    def _training_split(self, layout: Layout) -> tuple[list[int], list[int]]:
        """Latent / observed variables for the training masks.

        A single variable has no posterior split: with both indexes left at None the model
        learns its joint density alone (every training mask observes nothing), and
        ``posterior()`` / ``likelihood()`` say why they do not apply.
        """
        if (layout.n_variables == 1 and self.posterior_latent is None
                and self.posterior_observed is None):
            return [0], []
        return self._posterior_indexes(layout)

    def _posterior_indexes(self, layout: Layout) -> tuple[list[int], list[int]]:
        latent = [0] if self.posterior_latent is None else self.posterior_latent
        latent = layout.variable_indexes(latent, "posterior_latent")
        if self.posterior_observed is None:
            observed = [v for v in range(layout.n_variables) if v not in latent]
        else:
            observed = layout.variable_indexes(self.posterior_observed, "posterior_observed")
        if set(latent) & set(observed):
            raise ValueError(
                f"posterior_latent {latent} and posterior_observed {observed} overlap."
            )
        if not latent or not observed:
            single = (" The model has a single variable, so it has no posterior or likelihood: "
                      "use sample() and score_samples() for its joint density, or group the "
                      "columns into several variables with the variables parameter."
                      if layout.n_variables == 1 else "")
            raise ValueError(
                "posterior_latent and posterior_observed must each name at least one variable; "
                f"got {latent} and {observed}.{single}"
            )
        return latent, observed

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()  # DensityMixin: estimator_type "density_estimator"
        tags.input_tags.allow_nan = False  # fit and score_samples reject NaN and infinity
        tags.input_tags.sparse = False
        tags.target_tags.required = False  # unsupervised: y is ignored
        # On the CPU a fixed random_state makes fit bitwise reproducible, and score_samples
        # (fixed time grid, fixed Hutchinson probes) is a deterministic function of each row.
        # CUDA kernels (atomic adds in backward passes, batch-size-dependent GEMM algorithms)
        # give no such guarantee, so results there may differ in the last bits.
        tags.non_deterministic = self._on_accelerator()
        return tags

    def _on_accelerator(self) -> bool:
        """Whether ``device`` resolves to something other than the CPU (never raises)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return resolve_device(self.device).type != "cpu"
        except (ValueError, TypeError, RuntimeError):
            return False

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the network on joint simulations.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_columns) or (n_samples, n_variables, n_features)
            Simulations of the joint vector, e.g. ``[theta, x]`` stacked per row. numpy arrays,
            torch tensors and pandas DataFrames (column names become variable names).
        y : None
            Ignored.

        Returns
        -------
        self : SimformerEstimator
        """
        snapshot = dict(self.__dict__)
        try:
            return self._fit(X)
        except BaseException:
            # nothing half-changed: a failed or interrupted fit leaves the estimator as it was
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise

    def _fit(self, X):
        # parameters are validated by _fit_context (unless skip_parameter_validation is set)
        X = self._validate_X(X, reset=True)
        if X.shape[0] < 2:
            raise ValueError(
                f"X needs at least 2 samples (rows) to fit; got {X.shape[0]} sample."
            )
        layout = self._make_layout(X.shape[1])
        latent, observed = self._training_split(layout)
        cond = condition_sampler(self.condition_masks, layout, latent, observed)
        edge = edge_sampler(self.edge_masks, layout)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            )
        device = resolve_device(self.device)
        dynamics = make_dynamics(self.method, self.sde)

        seeds = np.random.SeedSequence(seed_from(self.random_state)).generate_state(4)
        cpu_gen = make_generator(int(seeds[0]), torch.device("cpu"))
        dev_gen = make_generator(int(seeds[1]), device)

        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
        Z = as_float_tensor((X - mean) / scale, device)
        n_val = int(round(self.validation_fraction * X.shape[0]))
        if X.shape[0] - n_val < 1:
            n_val = 0
        perm = torch.randperm(X.shape[0], generator=cpu_gen).to(device)
        x_val, x_train = Z[perm[:n_val]], Z[perm[n_val:]]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[2]))
            net = MaskedTransformer(layout.n_columns, self.d_model, self.n_layers, self.n_heads)
        net = net.to(device)
        config = TrainConfig(
            max_epochs=self.max_epochs,
            batch_size=self._batch_size(x_train.shape[0]),
            learning_rate=self.learning_rate,
            early_stopping=self.early_stopping,
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
            verbose=self.verbose,
        )
        net, result = train(
            net, dynamics, x_train, x_val if n_val else None, layout, cond, edge, config,
            cpu_gen, dev_gen,
        )

        self.layout_ = layout
        self.mean_, self.scale_ = mean, scale
        self.device_ = device
        self.dynamics_ = dynamics
        self.network_ = net
        self.loss_curve_ = result.loss_curve
        self.validation_scores_ = result.validation_scores
        self.best_epoch_ = result.best_epoch
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        if not result.converged and not result.interrupted:
            warnings.warn(
                f"max_epochs={self.max_epochs} reached while the "
                f"{'validation' if n_val else 'training'} loss was still improving; consider "
                "a larger max_epochs.",
                ConvergenceWarning,
                stacklevel=4,  # _fit, fit, _fit_context's wrapper, the caller
            )
        return self

    def _batch_size(self, n_train: int) -> int:
        if self.batch_size == "auto":
            return min(512, max(32, n_train // 16))
        return self.batch_size

    # ------------------------------------------------------------------ inference
    def _fitted_model(self) -> FittedModel:
        check_is_fitted(self, "network_")
        d = self.device_
        return FittedModel(
            network=self.network_,
            dynamics=self.dynamics_,
            layout=self.layout_,
            mean=torch.as_tensor(self.mean_, dtype=torch.float32, device=d),
            scale=torch.as_tensor(self.scale_, dtype=torch.float32, device=d),
            device=d,
            sampling_steps=self.sampling_steps,
            solver=self.sampler,
        )

    def condition(self, condition_mask, edge_mask=None) -> Conditional:
        """The conditional distribution for one condition mask (True = observed).

        Parameters
        ----------
        condition_mask : array-like of bool, one per variable or one per column
        edge_mask : array-like of bool of shape (n_variables, n_variables) or
            (n_columns, n_columns), optional. ``[i, j]`` True lets i attend to j.

        Returns
        -------
        Conditional
        """
        model = self._fitted_model()
        cols = self.layout_.condition_columns(condition_mask)
        return Conditional(model, cols, self.layout_.edge_columns(edge_mask))

    def _split_mask(self, observed_vars: list[int], returned_vars: list[int], edge_mask):
        model = self._fitted_model()
        layout = self.layout_
        var_mask = np.zeros(layout.n_variables, dtype=bool)
        var_mask[observed_vars] = True
        cols = layout.condition_columns(var_mask)
        keep = np.isin(layout.column_variable, returned_vars)
        return Conditional(model, cols, layout.edge_columns(edge_mask), returned=keep)

    def posterior(self, edge_mask=None) -> Conditional:
        """p(posterior_latent | posterior_observed); other variables are marginalised out."""
        check_is_fitted(self, "network_")
        latent, observed = self._posterior_indexes(self.layout_)
        return self._split_mask(observed, latent, edge_mask)

    def likelihood(self, edge_mask=None) -> Conditional:
        """p(posterior_observed | posterior_latent); other variables are marginalised out."""
        check_is_fitted(self, "network_")
        latent, observed = self._posterior_indexes(self.layout_)
        return self._split_mask(latent, observed, edge_mask)

    def set_condition_indexes(self, new_posterior_latent_idx=None, new_posterior_observed_idx=None):
        """Set which variables ``posterior()`` treats as latent (theta) and observed (x).

        Parameters
        ----------
        new_posterior_latent_idx, new_posterior_observed_idx : list of int, optional
            Variable indexes from the posterior's point of view; None leaves one unchanged.

        Returns
        -------
        self
        """
        if new_posterior_latent_idx is not None:
            self.posterior_latent = list(new_posterior_latent_idx)
        if new_posterior_observed_idx is not None:
            self.posterior_observed = list(new_posterior_observed_idx)
        return self

    def score_samples(self, X):
        """Joint log density of each row, by the probability-flow ODE (exact divergence up to
        16 columns, Hutchinson's estimator above).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_columns) or (n_samples, n_variables, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            Log density in the units of X.
        """
        model = self._fitted_model()
        X = self._validate_X(X, reset=False)
        joint = Conditional(model, np.zeros(self.layout_.n_columns, dtype=bool), None)
        return joint.log_prob(X)

    def score(self, X, y=None):
        """Mean joint log density of the rows of X (higher is better).

        The mean, as :meth:`sklearn.mixture.GaussianMixture.score` (``KernelDensity.score``
        returns the sum): model selection (``GridSearchCV``, ``cross_val_score``) compares
        held-out folds of different sizes on one scale.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_columns) or (n_samples, n_variables, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Draw joint samples (nothing observed).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Seed for this call.

        Returns
        -------
        ndarray of shape (n_samples, n_columns)
        """
        model = self._fitted_model()
        cond = Conditional(model, np.zeros(self.layout_.n_columns, dtype=bool), None)
        return cond.sample(n_samples, random_state=random_state)
