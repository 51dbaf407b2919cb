"""SimformerEstimator: the Simformer as a scikit-learn density estimator.

Reads like :class:`sklearn.neighbors.KernelDensity`: ``__init__`` stores parameters, ``fit``
runs named steps (validate, lay out, seed, build, split, train, warn) and hands the loop to
:mod:`skformer.training`, and inference methods validate their input and delegate to
:class:`~skformer.conditional.Conditional` over the fitted :class:`~skformer.model.SimformerModel`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import time
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

import skformer._version as _version
import skformer.distributed as distributed
import skformer.network as network_module
from skformer._legacy import pickle_state_to_description
from skformer._utils import (
    MAX_STANDARD_UNITS,
    MAX_THREADS,
    FitSeeds,
    check_fits_in_memory,
    fit_seeds,
    resolve_device,
    to_numpy,
    torch_threads,
    warn,
)
from skformer.conditional import Conditional, resolve_bounds
from skformer.dynamics import METHODS, Dynamics, make_dynamics
from skformer.dynamics.solvers import SOLVERS
from skformer.graph import DAG
from skformer.layout import Layout
from skformer.masks import CONDITION_MASK_NAMES, TrainingMasks
from skformer.model import MAX_ARCHITECTURE, SimformerModel, Standardiser
from skformer.network import PRECISIONS, MaskedTransformer, bf16_units
from skformer.positions import PositionTable, parse_positions
from skformer.training import PartialTrainer, TrainConfig, TrainResult, train

__all__ = ["SimformerEstimator"]

MAX_STEPS = 10_000
"""Most default solver steps a parameter may ask for (the Simformer paper samples with 500);
a call can still pass more with ``steps=``."""

AUTO_BF16 = ("cpu",)
"""Device types where ``precision="auto"`` picks bf16 when the device has bf16 units: CPUs with
AMX, where a bare training step at 13-20 tokens is 1.3-1.4x cheaper and a whole fit's epoch
0.95-1.19x (docs/speed.md). GPUs stay float32 until a benchmark on one measures both."""


class SimformerEstimator(DensityMixin, BaseEstimator):
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
    dynamics_options : dict or None, default=None
        Further constructor arguments of the dynamics (every constant of a method is one: see
        :class:`~skformer.dynamics.ScoreDynamics` and :class:`~skformer.dynamics.FlowDynamics`),
        e.g. ``{"p_mean": -1.0}``; unknown names raise a ValueError in ``fit``.
    training_options : dict or None, default=None
        Constants of the training loop that no other parameter sets (see
        :class:`~skformer.training.TrainConfig`): ``ema_decay``, ``warmup_fraction``,
        ``weight_decay``, ``clip_norm``, ``validation_rows``, ``cuda_graphs``, e.g.
        ``{"ema_decay": 0.999}``; unknown names raise a ValueError in ``fit``.
        ``{"checkpoint_dir": "ckpt"}`` makes a long fit resumable: ``fit`` saves its training
        state there every ``checkpoint_interval`` seconds (60), and the same fit started again
        after being killed or interrupted (same data, parameters and int ``random_state``)
        goes on from the last save to the same weights; a fit that ends removes its file
        (see ``docs/speed.md``). ``partial_fit`` ignores it.
    variables : list of int, list of lists of int, dict or None, default=None
        How 2-D columns group into variables, the units that masks address: sizes of consecutive
        groups (``[3, 3]``), lists of column indexes, or a dict naming them: ``{name: size}``
        (``{"theta": 2, "x": 20}``: consecutive groups in the dict's order, as the list of
        sizes) or ``{name: columns}`` (lists of column indexes or DataFrame column names; a
        single column as a one-element list). None: one variable per column. 3-D input
        ``(n, n_variables, n_features)`` defines the groups by its shape.
    condition_masks : str, callable, array-like or set, default="structured"
        Training-time condition masks (True = observed): "structured" (the paper's mixture of
        joint, posterior, likelihood and random masks; without a declared posterior split, a
        mixture of the joint and random masks that serves every conditional alike),
        "bernoulli" (each variable observed with probability 0.5), "uniform" (each row observes
        each variable with its own p ~ U(0, 1)), a callable
        ``(numpy.random.Generator, n) -> (n, n_variables)`` bool array, a collection of masks
        (one drawn per row) or one fixed mask.
    marginal_fraction : float in [0, 1), default=0.1
        Share of training rows that leave their observed variables out (the network's
        missing state), so that the network also learns the marginal of the latent ones, e.g.
        the prior of the parameters: iid-trial sampling (``sample(..., iid=True)``) composes
        with it. 0 trains on the condition masks alone (iid sampling then needs a known
        Gaussian ``prior``).
    edge_masks : array-like, callable or None, default=None
        Training-time attention masks over variables (``[i, j]`` True: i attends to j): None for
        full attention, one matrix, a collection (one drawn per row), or a callable of the
        (n, n_variables) numpy bool condition masks, or a :class:`~skformer.graph.DAG`.
    exchangeable : list of lists or None, default=None
        Sets of exchangeable variables (by index or name): draws that are independent and
        identically distributed given the same parents, such as repeated measurements or the
        four draws of slcp (``[["x1", "x2", "x3", "x4"]]``). The variables of a set must have
        the same number of columns; the k-th column of each shares one identity embedding and
        one standardisation, so the network is symmetric under swapping them and learns one
        conditional from all of them rather than one per variable. Needs one token per column
        (``tokens="column"``, or ``"auto"``, which keeps one for these variables); with a
        :class:`~skformer.graph.DAG`, the variables of a set must have the same parents and
        children. What it gains: docs/missing_data.md.
    posterior_latent, posterior_observed : list of int or None, default=None
        Variable indexes of theta and x, from the posterior's point of view; used by
        ``posterior()``, ``likelihood()`` and the "structured" masks. None: variable 0 is
        latent and all others observed. A model of a single variable (one column, say) has no
        such split: with both None it learns the joint density, for ``sample`` and
        ``score_samples``.
    bounds : dict or None, default=None
        Known support of columns, ``{column: (low, high)}`` in data units, with a column index,
        a column name, or a variable name for all its columns (``-np.inf`` / ``np.inf`` for
        one side); typically a uniform prior's box, ``{"theta": (-1, 1)}``. Every conditional
        stays inside the bounds of its non-observed columns, ``log_prob`` and
        ``score_samples`` are ``-inf`` outside, and ``map`` stays inside. How, ``support``
        says.
    support : {"truncate", "transform", "fold"}, default="truncate"
        How ``bounds`` are kept. "truncate": the model is learnt in data units and each
        conditional is the model's truncated to the bounds, as sbi's posteriors are truncated
        to the prior's support: samples outside are redrawn, and inside a log density is
        renormalised for the mass the model puts outside (the share of 4,000 draws per
        observation that fall inside; see ``Conditional.log_prob``'s ``normalise``), as sbi's
        ``log_prob`` does. Bounds are read when a conditional
        is made, so ``set_params(bounds=...)`` applies without a refit. "transform": a column
        bounded on both sides is learnt in the logit of its position in the box (fixed at
        fit: X must lie inside), so samples land inside without rejection and a log density
        is a proper density in data units (the transform's Jacobian included); one-sided
        bounds, and bounds set after the fit (narrower than the fit's), truncate on top. It
        wins where a posterior piles against an edge, and loses on two_moons and the seed task,
        which is why it is not the default (docs/concepts.md). "fold": the model is learnt in
        data units, as with "truncate", and a conditional's samples outside the bounds are
        reflected back in at the edge they crossed instead of redrawn (where the network
        smoothed a cut edge, the mass it spilled over belongs just inside); a log density is
        that of the folded samples, the model's at the point plus at its mirror images across
        the edges near it, and integrates to one without renormalising. It wins where a
        posterior piles against an edge (more than "transform", with no refit) and loses
        where the prior's edge cuts through a posterior that would go on (two_moons
        observation 5), so it is an opt-in too.
    tokens : {"column", "variable", "auto"} or int, default="column"
        How columns are grouped for the Transformer's middle blocks: one token per scalar
        column (the Simformer paper's choice), one per variable, each variable cut into tokens
        of at most k columns (an int k), or "auto" (chunks of at most 8 columns, at most 4
        tokens per variable; one token per column where variables carry positions and for data
        of at most 8 columns). With groups, every column still keeps its own value, state and
        output: the blocks attend over one token per group (embedding each of its columns'
        value and state) but the last, which attends over one token per column plus its
        group's output, so every condition mask is answered, also one that observes part of a
        group, and training draws such masks too (one row in five). Tokens never mix
        variables; an edge mask must treat a token's columns alike. What each costs and how
        accurate it is: docs/speed.md. ``token_columns_`` lists the columns of each token.
    d_model, n_layers, n_heads : int, default=64, 4, 4
        Transformer width, depth and attention heads.
    max_epochs : int, default=400
        Maximum passes over the training data; training usually ends earlier, when the
        validation loss has not improved for ``n_iter_no_change`` epochs. 400 because models
        capped at 100 were still improving and clearly undertrained on sbibm tasks
        (``benchmarks/training_budget.py``: two_moons C2ST 0.66 at 100 epochs, 0.53 at 400).
    batch_size : int or "auto", default="auto"
        Rows per optimiser step. "auto": ``max(32, n_train // 16)``, capped at 512 on a CPU and
        at 4096 on a GPU, so small data sets still get about 16 steps per epoch and large ones
        fast epochs (a GPU step costs about the same for 512 rows as for 4096,
        ``benchmarks/gpu.py``). The value used is ``batch_size_``.
    learning_rate : float, default=2e-3
        Peak learning rate of AdamW (linear warm-up, cosine decay).
    validation_fraction : float, default=0.1
        Share of rows held out to score epochs; the best epoch's weights are kept.
    early_stopping : bool, default=True
        Stop when the validation loss has not improved by ``tol`` for ``n_iter_no_change``
        epochs.
    n_iter_no_change : int, default=20
    tol : float, default=1e-4
    warm_start : bool, default=False
        When True and the estimator is fitted, ``fit`` continues training the fitted model on
        the X it is given instead of starting afresh (scikit-learn's convention, as in
        :class:`~sklearn.neural_network.MLPRegressor`): it keeps the standardiser and the
        architecture, runs a new warm-up and cosine schedule of up to ``max_epochs`` epochs, and
        keeps the starting weights when no epoch beats them on validation. Pass every
        simulation so far to refine the model on all of them (what
        :func:`skformer.sequential.rounds` does), or only new rows to fine-tune on those alone,
        which may forget what the old rows taught. Parameters that describe the model (layout,
        ``method``, ``sde``, ``dynamics_options``, ``tokens``, ``d_model``, ``n_layers``,
        ``n_heads``) must not change: ``fit`` raises a ValueError if they did. The histories
        (``loss_curve_``, ``validation_scores_``, ``n_iter_``) continue. See also
        :meth:`partial_fit`.
    solver : {"dpm", "heun", "euler", "sde"}, default="dpm"
        Default solver of sampling: the probability-flow ODE with DPM-Solver++(3M), Heun or
        Euler, or the reverse SDE with Euler-Maruyama (see :mod:`skformer.dynamics.solvers`).
    sampling_steps : int, default=20
        Default solver steps when sampling: one network call per step (Heun: two). At most
        10,000.
    log_prob_steps : int, default=20
        Default ODE steps of log densities (``score_samples``, ``Conditional.log_prob``); 2 to
        10,000.
    device : str or torch.device, default="auto"
        "auto" (a GPU when present), "cpu", "cuda", "cuda:1", ...
    precision : {"float32", "auto", "bfloat16"}, default="float32"
        The network's arithmetic. "bfloat16" runs its matrix products under bf16 autocast
        (weights, losses, the validation loss, the preconditioning and the solvers stay
        float32; log densities are computed wholly in float32) and needs a device with bf16
        units (:func:`skformer.network.bf16_units`: a CPU with AMX, a GPU of compute
        capability 8 or later). "auto": bf16 where :data:`AUTO_BF16` names the device's type
        and it has such units, float32 elsewhere (never on a CPU without them). On a CPU with
        AMX, bf16 fits 0.95-1.19x faster per epoch (a bare step at 13-20 columns: 1.3-1.4x)
        with the same C2ST on six of the seven benchmark tasks, but gaussian_mixture lost
        0.007-0.020 (two seeds), so float32 stays the default (docs/speed.md). The value used
        is ``precision_``; saved models keep it, and run in float32 on a device without bf16
        units.
    random_state : int, RandomState or Generator instance, or None, default=None
        Seeds everything random in ``fit`` (see :func:`skformer._utils.fit_seeds`): weight
        initialisation, validation split, shuffling, masks and noise. With an int, a fit is
        repeated bit for bit on the same machine, device, torch version and number of threads;
        across thread counts, machines or versions the results agree in distribution only (the
        order of floating-point sums differs). Sampling takes its own ``random_state``.
    n_threads : int or None, default=None
        Threads torch may use for the computations of ``fit``, ``sample``, ``score`` and
        ``score_samples`` (set for the call, restored after). None leaves torch's setting:
        all physical cores, unless ``OMP_NUM_THREADS``, a :func:`threadpoolctl.threadpool_limits`
        block or a joblib/dask worker (one thread each) says otherwise. Set it when several
        fits share a machine outside joblib, e.g. ``n_threads=1`` for two scripts on two cores;
        threads competing for cores slow a fit many times over (``benchmarks/threads.py``).
        The setting is global to the process, so concurrent fits in threads of one process
        (joblib's "threading" backend) share it; prefer processes (loky, dask).
    verbose : int, default=0
        Show a progress bar during training when positive.

    Attributes
    ----------
    model_ : SimformerModel
        The fitted model (network, dynamics, standardiser, layout) as one ``torch.nn.Module``.
    network_ : torch.nn.Module
        The trained masked Transformer (exponential moving average of the weights).
    layout_ : Layout
        Columns and their grouping into variables.
    dynamics_ : Dynamics
        The generative dynamics of ``method`` and ``sde``.
    mean_, scale_ : ndarray of shape (n_columns,)
        Per-column standardisation learned in fit (of the logits, for the columns in
        ``support_``).
    support_ : dict
        ``{column name: (low, high)}``: the columns learnt in the logit of their box
        (``support="transform"``); empty otherwise.
    device_ : torch.device
        Where the model lives.
    precision_ : {"float32", "bfloat16"}
        The network's arithmetic (``precision`` resolved for the device of ``fit``).
    batch_size_ : int
        The batch size used (``batch_size`` resolved), per process under data-parallel training.
    n_training_rows_ : int
        Rows this process trained on (under ``torchrun``, its share of the training rows).
    token_columns_ : list of lists of int
        The columns of each token (``tokens`` resolved).
    loss_curve_ : list of float
        Mean training loss per epoch (per ``partial_fit`` call), over every fit a warm start
        continued.
    validation_scores_ : list of float
        Validation loss per epoch (empty without a validation set).
    best_epoch_ : int
        Epoch (0-based, an index of ``loss_curve_``) whose weights were kept; after
        ``partial_fit``, the last call.
    n_iter_ : int
        Epochs run (``partial_fit`` calls count one each), over every fit a warm start
        continued.
    training_time_ : float
        Seconds the training loop ran, over the same fits and calls as ``n_iter_``; for a fit
        resumed from a checkpoint (``training_options["checkpoint_dir"]``), the processes
        before the resume included. (Absent from an estimator saved by an earlier skformer
        until it is fitted again.)
    converged_ : bool
        Whether the validation loss settled before ``max_epochs``.
    n_features_in_ : int
        Number of columns of the joint vector.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
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
        "dynamics_options": [None, dict],
        "training_options": [None, dict],
        "variables": [None, list, tuple, dict],
        "condition_masks": [StrOptions(set(CONDITION_MASK_NAMES)), callable, "array-like", set],
        "edge_masks": [None, callable, "array-like", DAG],
        "exchangeable": [None, list, tuple],
        "posterior_latent": [None, "array-like", Interval(Integral, None, None, closed="neither")],
        "posterior_observed": [None, "array-like",
                               Interval(Integral, None, None, closed="neither")],
        "bounds": [None, dict],
        "support": [StrOptions({"transform", "truncate", "fold"})],
        "tokens": [StrOptions({"column", "variable", "auto"}),
                   Interval(Integral, 1, None, closed="left")],
        # the loaders' limits (MAX_ARCHITECTURE): whatever fit accepts, load restores
        "d_model": [Interval(Integral, 1, MAX_ARCHITECTURE["d_model"], closed="both")],
        "n_layers": [Interval(Integral, 1, MAX_ARCHITECTURE["n_layers"], closed="both")],
        "n_heads": [Interval(Integral, 1, MAX_ARCHITECTURE["n_heads"], closed="both")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "solver": [StrOptions(set(SOLVERS))],
        "sampling_steps": [Interval(Integral, 1, MAX_STEPS, closed="both")],
        "log_prob_steps": [Interval(Integral, 2, MAX_STEPS, closed="both")],
        "device": [str, torch.device, HasMethods("type")],
        "precision": [StrOptions({"auto", *PRECISIONS})],
        "random_state": ["random_state", np.random.Generator],
        "n_threads": [None, Interval(Integral, 1, MAX_THREADS, closed="both")],
        "marginal_fraction": [Interval(Real, 0, 1, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        method="score",
        sde="ve",
        dynamics_options=None,
        training_options=None,
        variables=None,
        condition_masks="structured",
        marginal_fraction=0.1,
        edge_masks=None,
        exchangeable=None,
        posterior_latent=None,
        posterior_observed=None,
        bounds=None,
        support="truncate",
        tokens="column",
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
        warm_start=False,
        solver="dpm",
        sampling_steps=20,
        log_prob_steps=20,
        device="auto",
        precision="float32",
        random_state=None,
        n_threads=None,
        verbose=0,
    ):
        self.method = method
        self.sde = sde
        self.dynamics_options = dynamics_options
        self.training_options = training_options
        self.variables = variables
        self.condition_masks = condition_masks
        self.marginal_fraction = marginal_fraction
        self.edge_masks = edge_masks
        self.exchangeable = exchangeable
        self.posterior_latent = posterior_latent
        self.posterior_observed = posterior_observed
        self.bounds = bounds
        self.support = support
        self.tokens = tokens
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
        self.warm_start = warm_start
        self.solver = solver
        self.sampling_steps = sampling_steps
        self.log_prob_steps = log_prob_steps
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    # ------------------------------------------------------------------ fitted views
    @property
    def network_(self) -> MaskedTransformer:
        return self._model().network

    @property
    def layout_(self) -> Layout:
        return self._model().layout

    @property
    def dynamics_(self) -> Dynamics:
        return self._model().dynamics

    @property
    def support_(self) -> dict[str, tuple[float, float]]:
        model = self._model()
        return {model.layout.column_names[c]: b for c, b in model.standardiser.box().items()}

    @property
    def mean_(self) -> np.ndarray:
        return to_numpy(self._model().standardiser.mean)

    @property
    def scale_(self) -> np.ndarray:
        return to_numpy(self._model().standardiser.scale)

    @property
    def device_(self) -> torch.device:
        return self._model().device

    @property
    def precision_(self) -> str:
        return self._model().precision

    def _model(self) -> SimformerModel:
        try:
            return self.__dict__["model_"]
        except KeyError:
            raise AttributeError("this SimformerEstimator is not fitted yet") from None

    # ------------------------------------------------------------------ input handling
    def _validate_X(self, X, reset: bool) -> np.ndarray:
        """2-D or 3-D X (numpy, torch, pandas) -> float64 array of shape (n_samples, n_columns)."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        if np.ma.isMaskedArray(X):  # a masked entry is a missing one
            X = np.ma.filled(X.astype(np.float64), np.nan)
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
                          force_writeable=True, ensure_min_samples=1,
                          ensure_all_finite="allow-nan")
        if np.isinf(X).any():
            raise ValueError("Input X contains infinity; NaN marks a missing value, infinity is "
                             "always an error.")
        if reset:
            self.input_shape_ = shape3
        return X

    def _make_layout(self, n_columns: int) -> Layout:
        """The grouping of columns into variables, from the input shape or ``variables``."""
        if getattr(self, "input_shape_", None) is not None:
            V, F = self.input_shape_
            if self.variables is not None:
                raise ValueError(
                    "variables applies to 2-D input; 3-D input (n, n_variables, n_features) "
                    "already groups its columns."
                )
            return Layout.from_spec(n_columns, [F] * V)
        names = getattr(self, "feature_names_in_", None)
        labels = None if names is None else [str(n) for n in names]
        spec = self.variables
        if isinstance(spec, dict):
            return Layout.from_spec(n_columns, _dict_groups(spec, n_columns, names),
                                    names=list(spec.keys()), column_labels=labels)
        if spec is None and names is not None:
            return Layout.from_spec(n_columns, None, names=list(names), column_labels=labels)
        return Layout.from_spec(n_columns, spec, column_labels=labels)

    def _check_layout(self, layout: Layout) -> tuple[list[int], list[int]] | None:
        """The checks of the parameters that need the layout, made before any work: by
        ``fit``, ``partial_fit``, every loader (so that what fit accepts, load restores, and
        what load refuses, fit refused first) and ``sequential.rounds`` before it simulates.
        Returns the training split (:meth:`_training_split`)."""
        split = self._training_split(layout)
        resolve_bounds(self.bounds, layout)  # a wrong key fails here, not at the first sample
        TrainingMasks(self.condition_masks, self.edge_masks, layout, split, 0, "cpu")
        self._check_exchangeable(layout)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            )
        return split

    def _check_exchangeable(self, layout: Layout) -> list[list[int]]:
        """The exchangeable sets as variable indexes, checked against the layout, the tokens
        and a declared DAG (in which swapping two variables of a set must change nothing)."""
        sets = layout.exchangeable_sets(self.exchangeable)
        if not sets:
            return sets
        if any(len(t) > 1 for t in self._token_columns(layout)):
            raise ValueError(f"exchangeable variables need one token per column (tokens="
                             f"'column' or 'auto'); got tokens={self.tokens!r}.")
        if isinstance(self.edge_masks, DAG):
            P = self.edge_masks.parent_matrix(layout.n_variables, layout.names)
            for members in sets:
                for b in members[1:]:
                    a = members[0]
                    perm = np.arange(layout.n_variables)
                    perm[[a, b]] = perm[[b, a]]
                    if not np.array_equal(P[np.ix_(perm, perm)], P):
                        raise ValueError(
                            f"exchangeable variables {layout.names[a]!r} and "
                            f"{layout.names[b]!r} play different roles in the DAG (their "
                            f"parents or children differ); exchangeable draws share their "
                            f"parents and children.")
        return sets

    def _make_dynamics(self) -> Dynamics:
        options = {"sde": self.sde} if self.method == "score" else {}
        return make_dynamics(self.method, {**options, **(self.dynamics_options or {})})

    def _check_before_fit(self, n_columns: int) -> None:
        """Every check ``fit`` makes of the parameters for data of ``n_columns`` columns, with
        no data and no work: for callers that must fail before they spend simulations
        (``sequential.rounds``)."""
        self._validate_params()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unavailable GPU falls back; a malformed one not
            resolve_device(self.device)
        self._check_layout(self._make_layout(n_columns))
        self._make_dynamics()  # dynamics_options
        self._train_config(batch_size=1)  # training_options

    def _training_split(self, layout: Layout) -> tuple[list[int], list[int]] | None:
        """Latent / observed variables the training masks favour, or None to serve every
        conditional alike.

        A split is declared by ``posterior_latent`` / ``posterior_observed``, or implied by 3-D
        input ``(n, variables, features)`` (sbi's layout: variable 0 is theta). Without one,
        2-D data get masks for all conditionals. A single variable has no split: the model
        learns its joint density (every training mask observes nothing), and ``posterior()`` /
        ``likelihood()`` say why they do not apply.
        """
        declared = self.posterior_latent is not None or self.posterior_observed is not None
        if layout.n_variables == 1 and not declared:
            return [0], []
        if not declared and getattr(self, "input_shape_", None) is None:
            return None
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

    def _validate_params(self):
        """scikit-learn's checks of ``_parameter_constraints``, and no booleans where an int is
        asked for (``Interval(Integral)`` takes ``True`` as 1: ``batch_size=True``)."""
        super()._validate_params()
        integer = [name for name, rules in self._parameter_constraints.items()
                   if any(isinstance(r, Interval) and r.type is Integral for r in rules)]
        flags = sorted(n for n in integer if isinstance(getattr(self, n), (bool, np.bool_)))
        if flags:
            raise ValueError(f"{', '.join(flags)} must be an int, not a boolean; got "
                             f"{', '.join(repr(getattr(self, n)) for n in flags)}.")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()  # DensityMixin: estimator_type "density_estimator"
        tags.input_tags.allow_nan = True  # NaN = missing (never observed, out of the loss)
        tags.input_tags.sparse = False
        tags.target_tags.required = False  # unsupervised: y is ignored
        # On the CPU a fixed random_state repeats a fit bit for bit with the same torch and
        # thread count (docs/architecture.md#reproducibility), and score_samples (fixed time
        # grid, fixed Hutchinson probes) is a deterministic function of each row. CUDA kernels
        # (atomic adds in backward passes, batch-size-dependent GEMM algorithms) give no such
        # guarantee, so results there may differ in the last bits.
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
    def fit(self, X, y=None, positions=None):
        """Train the network on joint simulations.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_columns) or (n_samples, n_variables, n_features)
            Simulations of the joint vector, e.g. ``[theta, x]`` stacked per row. numpy arrays,
            torch tensors and pandas DataFrames (column names become variable names).
        y : None
            Ignored.
        positions : dict, optional
            Function-valued variables: ``{name: T}`` gives the position (a time, a location)
            at which each column of that variable was read, so that the network embeds it and
            the variable can later be read anywhere (``condition(..., positions=...)``). T has
            shape ``(k,)`` or ``(k, dim)`` for the variable's ``k`` columns, shared by every
            row, or ``(n_samples, k)`` / ``(n_samples, k, dim)``, one set per row, with NaN for
            a reading that is absent (its value is then ignored). Needs ``tokens="column"``
            or ``"auto"``.
            In training each row keeps a random subset of these readings (see
            ``docs/positions.md``).

        Returns
        -------
        self : SimformerEstimator

        Raises
        ------
        ValueError
            For bad input or parameters, and when training diverges (a loss that is not finite
            or far above the untrained network's) before any epoch did better than the untrained
            network. A fit that raises leaves the estimator as it was.
        KeyboardInterrupt
            Ctrl-C stops training and is raised again, so a script stops. When at least one
            epoch had finished, the estimator keeps the best weights so far (``converged_`` is
            False), so that in a notebook the model trained until then is not lost; otherwise
            it is left as it was.

        Warns
        -----
        RuntimeWarning
            When training diverged after a good epoch: the estimator keeps that epoch's weights.
        ConvergenceWarning
            When ``max_epochs`` ended training before early stopping decided; the message says
            whether the loss was still improving or had stalled.
        """
        result = self._all_or_nothing(self._fit, X, positions)
        if result.interrupted:
            message = (f"fit interrupted after {result.n_iter} epochs; the estimator keeps the "
                       f"weights of {_kept_weights(result)}, the best so far")
            warn(message + ".", RuntimeWarning)
            raise KeyboardInterrupt(message)
        return self

    def _fit(self, X, positions=None) -> TrainResult:
        # parameters are validated by _fit_context (unless skip_parameter_validation is set)
        warm = bool(self.warm_start) and "model_" in self.__dict__
        self._check_positions_given(positions, continuing=warm)
        X = self._validate_X(X, reset=not warm)
        layout = self._make_layout(X.shape[1])
        X, P, table = self._read_positions(X, layout, positions)
        X, P = self._drop_empty_rows(X, P)
        if X.shape[0] < 2:
            raise ValueError(
                f"X needs at least 2 samples (rows) to fit; got {X.shape[0]} sample."
            )
        split = self._check_layout(layout)
        device = distributed.local_device(resolve_device(self.device))
        group = distributed.current(device)
        seeds = fit_seeds(self.random_state, len(self.loss_curve_) if warm else 0)
        model = self._build_model(X, layout, seeds, table)  # the same weights on every rank
        if warm:
            model = self._continued(model, table)
            _check_new_rows(model, X)
        if group is not None:  # each rank draws its own masks, noise and order
            seeds = seeds.for_rank(group)
        within = _splits_tokens(model)
        masks = TrainingMasks(self.condition_masks, self.edge_masks, layout, split, seeds.masks,
                              device, within)
        validation_masks = TrainingMasks(self.condition_masks, self.edge_masks, layout, split,
                                         seeds.validation, device, within)
        model = model.to(device)
        model.precision = self._resolve_precision(device)
        self._note_missing(model, X, keep=warm)
        # standard units, NaN where missing: the loop leaves those entries out
        Z = model.standardiser(torch.as_tensor(X).to(device))
        x_train, x_val = self._split_rows(Z, seeds)
        p_train = p_val = None
        if P is not None:  # positions in standard units follow their rows
            p_train, p_val = self._split_rows(
                model.positions.columns(layout, torch.as_tensor(P).to(device)), seeds)
        self.batch_size_ = self._resolve_batch_size(x_train.shape[0], device)
        if group is not None:  # the same batch in all, split over the ranks
            self.batch_size_ = max(1, self.batch_size_ // group.world)
        _check_step_memory(model, min(self.batch_size_, x_train.shape[0]), device)
        config = self._train_config(model)
        if config.checkpoint_dir is not None and (not isinstance(self.random_state, Integral)
                                                  or isinstance(self.random_state, bool)):
            raise ValueError(
                "training_options['checkpoint_dir'] needs an int random_state (got "
                f"{self.random_state!r}): a fit resumes only the same fit, seeds included.")
        model.marginal_fraction = config.marginal_fraction
        network, result = train(model.network, model.dynamics, x_train, x_val, masks,
                                validation_masks, config, seeds, group, keep_start=warm,
                                p_train=p_train, p_val=p_val, identity=self._identity(model))
        model.network = network
        self.model_ = model.requires_grad_(False).eval()
        self._record(result, continued=warm)
        self.__dict__.pop("_partial", None)  # partial_fit starts afresh from these weights
        if group is None or group.is_main:
            self._warn_about(result, has_validation=x_val is not None)
        return result

    def _identity(self, model: SimformerModel | None = None) -> str:
        """What, besides the rows, seeds and starting weights, makes a fit this fit: its
        parameters (not those that only say how to run it) and the model's description (which
        holds design constants that no parameter sets), for a checkpoint's fingerprint."""
        skip = ("verbose", "n_threads", "device", "training_options")

        def plain(v):  # arrays whole (repr elides long ones), containers item by item
            if isinstance(v, np.ndarray):
                return ("array", v.dtype.str, v.shape,
                        hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
            if isinstance(v, (list, tuple)):
                return type(v)(plain(x) for x in v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        params = sorted((k, plain(v)) for k, v in self.get_params(deep=False).items()
                        if k not in skip)
        described = None if model is None else model.describe()
        # no addresses: the same in a rerun
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(params) + repr(described))

    def _continued(self, fresh: SimformerModel, table: PositionTable | None) -> SimformerModel:
        """A trainable copy of the fitted model, to continue training (warm start,
        partial_fit); ValueError if the parameters now describe another model (``fresh``).
        The positions of the new rows (``table``) widen the range the model was trained on;
        their units stay the first fit's."""
        self._check_unchanged(fresh)
        model = copy.deepcopy(self.model_)
        model.network.requires_grad_(True)
        if table is not None:
            _check_new_positions(model, table)
            model.positions.widen(table)
        return model

    def _resolve_precision(self, device: torch.device) -> str:
        """``precision`` for ``device``: "auto" is bf16 where the device has bf16 units (see
        :func:`skformer.network.bf16_units`), float32 elsewhere; "bfloat16" on a device
        without them is refused (emulated bf16 is slower and no more accurate)."""
        if self.precision == "float32":
            return "float32"
        units = bf16_units(device)
        if self.precision == "auto":
            return "bfloat16" if units and device.type in AUTO_BF16 else "float32"
        if not units:
            raise ValueError(f"precision='bfloat16' needs a device with bf16 units (a GPU, or "
                             f"a CPU with AMX); {device} has none. Use 'auto' or 'float32'.")
        return "bfloat16"

    def _check_unchanged(self, fresh: SimformerModel) -> None:
        old, new = self.model_.describe(), fresh.describe()
        for d in (old, new):  # which variables carry positions, not whether rows shared them
            d["positions"] = {k: v for k, v in d.get("positions", {}).items()
                              if k not in ("shared", "seen")}
            # design constants of new models: the continued model keeps its own
            d["network"] = {k: v for k, v in d["network"].items() if k != "edge_heads"}
            d["support"] = d.get("support", {}).get("box")
        changed = [part for part in ("layout", "dynamics", "network", "positions", "support")
                   if old.get(part) != new.get(part)]
        if changed:
            raise ValueError(
                f"warm_start=True (and partial_fit) continue the fitted model, but the "
                f"parameters now describe a model whose {' and '.join(changed)} changed; set "
                "them back, or fit afresh with warm_start=False (or on a clone)."
            )

    @staticmethod
    def _note_missing(model: SimformerModel, X: np.ndarray, keep: bool) -> None:
        """Record which columns had missing entries (also in earlier fits when ``keep``)."""
        seen = torch.as_tensor(np.isnan(X).any(axis=0), device=model.missing_seen.device)
        model.missing_seen.copy_(model.missing_seen | seen if keep else seen)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, positions=None):
        """One pass over the rows of X: one optimiser step per ``batch_size_`` rows, in order.

        For simulations that arrive in chunks: each call trains on its chunk at the cost of
        one epoch over it, keeping the optimiser's state, the step count and the moving average
        of the weights between calls. The first call on an unfitted estimator builds the model
        (the standardiser from that call's rows, and ``batch_size_`` from their number: give it
        a representative chunk); a call on a fitted estimator continues from its weights. The
        learning rate warms up over the first 100 steps, then stays at ``learning_rate``; there
        is no validation, so nothing stops early: the number of calls is the schedule. A later
        ``fit`` (warm or not) ends the sequence; a pickled or saved estimator keeps the
        weights but not the optimiser's state, so ``partial_fit`` after loading restarts its
        warm-up.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_columns) or (n_samples, n_variables, n_features)
            A chunk of simulations; the first call needs at least 2 rows.
        y : None
            Ignored.
        positions : dict, optional
            As in :meth:`fit`, for this chunk's rows; every call must give positions for the
            same variables.

        Returns
        -------
        self : SimformerEstimator

        Raises
        ------
        ValueError
            For bad input, parameters that no longer describe the fitted model, or a loss that
            is not finite (the call is undone). A call that raises, or is interrupted, leaves
            the estimator as it was.

        Examples
        --------
        >>> import numpy as np
        >>> from skformer import SimformerEstimator
        >>> est = SimformerEstimator(d_model=16, n_layers=1, random_state=0)
        >>> rng = np.random.default_rng(0)
        >>> for _ in range(3):  # three chunks of 200 simulations arrive
        ...     theta = rng.uniform(-1, 1, size=(200, 1))
        ...     chunk = np.hstack([theta, theta + 0.1 * rng.standard_normal((200, 1))])
        ...     est = est.partial_fit(chunk)
        >>> est.n_iter_, len(est.loss_curve_)
        (3, 3)
        """
        self._all_or_nothing(self._partial_fit, X, positions)
        return self

    def _all_or_nothing(self, step, *args):
        """``step(*args)`` under ``n_threads``; if it raises (or is interrupted), the estimator
        is put back as it was: nothing half-changed."""
        snapshot = dict(self.__dict__)
        try:
            with torch_threads(self.n_threads):
                return step(*args)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise

    def _partial_fit(self, X, positions=None) -> None:
        first = "model_" not in self.__dict__
        if not first:  # scikit-learn's _fit_context skips this for a fitted partial_fit
            self._validate_params()
        self._check_positions_given(positions, continuing=not first)
        X = self._validate_X(X, reset=first)
        layout = self._make_layout(X.shape[1])
        X, P, table = self._read_positions(X, layout, positions)
        X, P = self._drop_empty_rows(X, P)
        if first and X.shape[0] < 2:
            raise ValueError(f"the first partial_fit needs at least 2 samples (rows) to build "
                             f"the model; got {X.shape[0]}.")
        device = distributed.local_device(resolve_device(self.device))
        if distributed.current(device) is not None:
            raise ValueError("partial_fit does not train data-parallel under torchrun; use fit.")
        split = self._check_layout(layout)
        trainer = self.__dict__.get("_partial")
        if trainer is None:
            seeds = fit_seeds(self.random_state, 0 if first else len(self.loss_curve_))
            model = self._build_model(X, layout, seeds, table)
            if first:
                self.batch_size_ = self._resolve_batch_size(X.shape[0], device)
                self.loss_curve_, self.validation_scores_, self.n_iter_ = [], [], 0
                self.n_training_rows_, self.converged_ = 0, False
            else:
                model = self._continued(model, table)
            model = model.to(device)
            model.precision = self._resolve_precision(device)
            config = self._train_config(model)
            model.marginal_fraction = config.marginal_fraction
            masks = TrainingMasks(self.condition_masks, self.edge_masks, layout, split,
                                  seeds.masks, device, _splits_tokens(model))
            trainer = PartialTrainer(copy.deepcopy(model.network).requires_grad_(True),
                                     model.dynamics, masks, config, seeds)
            self.model_ = model.requires_grad_(False).eval()
        else:  # the parameters must still describe the model
            self._check_unchanged(self._build_model(X, layout, fit_seeds(0), table))
            if self.batch_size != "auto":  # "auto" stays what the first chunk resolved
                self.batch_size_ = int(self.batch_size)
            trainer.reconfigure(self._train_config(self.model_))
        model = copy.deepcopy(self.model_)
        if table is not None and not first:
            _check_new_positions(model, table)
            model.positions.widen(table)
        if not first:
            _check_new_rows(model, X)
        _check_step_memory(model, min(trainer.config.batch_size, X.shape[0]), model.device)
        model.marginal_fraction = trainer.config.marginal_fraction
        self._note_missing(model, X, keep=not first)
        p = None if P is None else model.positions.columns(
            layout, torch.as_tensor(P).to(model.device))
        started = time.perf_counter()
        loss = trainer.pass_over(model.standardiser(torch.as_tensor(X).to(model.device)), p)
        self.training_time_ = (time.perf_counter() - started
                               + (0.0 if first else self.__dict__.get("training_time_", 0.0)))
        model.network = copy.deepcopy(trainer.ema)
        self.model_ = model.requires_grad_(False).eval()
        self._partial = trainer
        self.loss_curve_ = [*self.loss_curve_, loss]
        self.n_iter_ += 1
        self.best_epoch_ = self.n_iter_ - 1
        self.n_training_rows_ += X.shape[0]

    def _check_positions_given(self, positions, continuing: bool) -> None:
        """A fit that continues a model fitted with positions needs positions for the same
        variables (and one without, none)."""
        if not continuing:
            return
        table = self.model_.positions
        if table is not None and positions is None:
            names = [self.model_.layout.names[v] for v in table.variables]
            raise ValueError(f"this model was fitted with positions for {names}; a fit that "
                             f"continues it needs them too: pass positions={{{names[0]!r}: ...}}.")
        if table is None and positions is not None:
            raise ValueError("this model was fitted without positions; a fit that continues it "
                             "takes none (fit afresh with warm_start=False to add them).")

    def _drop_empty_rows(self, X: np.ndarray, P: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows with no value at all carry nothing to learn: dropped (from the positions too),
        with a warning."""
        empty = np.isnan(X).all(axis=1)
        if empty.any():
            warn(f"{int(empty.sum())} of {X.shape[0]} rows of X are missing every value "
                 f"(rows {np.flatnonzero(empty)[:10].tolist()}"
                 f"{' ...' if empty.sum() > 10 else ''}); fit leaves them out.", UserWarning)
        return X[~empty], (None if P is None else P[~empty])

    def _read_positions(self, X: np.ndarray, layout: Layout, positions
                        ) -> tuple[np.ndarray, np.ndarray | None, PositionTable | None]:
        """Validate ``fit``'s positions -> (X with absent readings NaN, positions of every
        column (n, n_columns, dim) in data units with NaN where a column has none, the
        model's position table); (X, None, None) without positions."""
        if positions is None:
            return X, None, None
        if self.tokens not in ("column", "auto"):
            raise ValueError(f"positions need one token per column (tokens='column' or "
                             f"'auto'); got tokens={self.tokens!r}.")
        parsed = parse_positions(positions, layout, X.shape[0])
        dim = next(iter(parsed.values())).shape[-1]
        n = X.shape[0]
        P = np.full((n, layout.n_columns, dim), np.nan)
        variables = sorted(parsed)
        low, high = np.empty((len(variables), dim)), np.empty((len(variables), dim))
        for r, v in enumerate(variables):
            cols = list(layout.groups[v])
            P[:, cols, :] = parsed[v]
            present = P[:, cols, 0][~np.isnan(P[:, cols, 0])]
            if present.size == 0:
                raise ValueError(f"positions[{layout.names[v]!r}] holds no position (all NaN).")
            block = P[:, cols, :].reshape(-1, dim)
            low[r], high[r] = np.nanmin(block, 0), np.nanmax(block, 0)
        absent = np.isnan(P[..., 0]) & np.isin(layout.column_variable, variables)
        if absent.any():
            X = np.where(absent, np.nan, X)
        shared = [v for v in variables if parsed[v].ndim == 2]
        default = np.full((layout.n_columns, dim), np.nan)
        for v in shared:
            default[list(layout.groups[v])] = parsed[v]
        table = PositionTable(variables, torch.as_tensor(low), torch.as_tensor(high),
                              torch.as_tensor(default), shared)
        return X, P, table

    def _build_model(self, X: np.ndarray, layout: Layout, seeds: FitSeeds,
                     positions: PositionTable | None = None) -> SimformerModel:
        """An untrained model: standardiser fitted to X, dynamics, freshly seeded network (on
        the CPU; the caller moves it). With ``positions``, the columns of each variable with
        positions share one identity and one standardisation."""
        self.token_columns_ = self._token_columns(layout, positions is not None)
        dynamics = self._make_dynamics()
        groups = self.token_columns_
        if all(len(g) == 1 for g in groups):
            groups = None  # one token per column: the paper's embedding
        # columns that share an identity and a standardisation: the readings of a variable with
        # positions, the k-th columns of exchangeable variables
        shared = layout.shared_columns(layout.exchangeable_sets(self.exchangeable),
                                       [] if positions is None else positions.variables)
        identities, tied = layout.column_identities(shared), shared or None
        dim = 0 if positions is None else positions.dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeds.weights)
            network = MaskedTransformer(layout.n_columns, self.d_model, self.n_layers,
                                        self.n_heads, groups=groups, identities=identities,
                                        position_dim=dim,
                                        group_embedding=network_module.GROUP_EMBEDDING,
                                        edge_heads=self._edge_heads())
        low, high = self._fit_box(X, layout, shared)
        return SimformerModel(network, dynamics,
                              Standardiser.from_data(torch.as_tensor(X), tied, low, high),
                              layout, positions=positions)

    def _fit_box(self, X: np.ndarray, layout: Layout, shared: list[list[int]]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The box (low, high per column, infinite where none) that a new model learns its
        columns in (``support="transform"``: the columns that ``bounds`` bound on both sides);
        ValueError when X has values outside it, or when columns that share a standardisation
        (``shared``: readings of a variable with positions, exchangeable draws) have
        different boxes."""
        box = {c: b for c, b in resolve_bounds(self.bounds, layout).items()
               if np.isfinite(b).all()}
        if self.support != "transform" or not box:
            return None, None
        for cols in shared:
            if len({box.get(c) for c in cols}) > 1:
                names = [layout.column_names[c] for c in cols]
                raise ValueError(
                    f"columns {names} share one standardisation (the readings of a variable "
                    "with positions, or exchangeable draws) but not one box: bound them alike "
                    "(by the variable's name), or use support='truncate'.")
        low = torch.full((layout.n_columns,), -np.inf, dtype=torch.float64)
        high = torch.full((layout.n_columns,), np.inf, dtype=torch.float64)
        for c, (lo, hi) in box.items():
            outside = (X[:, c] < lo) | (X[:, c] > hi)
            if outside.any():
                raise ValueError(
                    f"X has {int(outside.sum())} value(s) of column "
                    f"{layout.column_names[c]!r} outside its bounds ({lo:g}, {hi:g}), e.g. "
                    f"{X[np.flatnonzero(outside)[0], c]!r}; with support='transform' the model "
                    "learns that column inside its box only. Correct the bounds, or use "
                    "support='truncate' (bounds then only truncate the model's conditionals).")
            low[c], high[c] = lo, hi
        return low, high

    def _edge_heads(self) -> int | None:
        """The heads a declared DAG restricts in a new network (its ``heads``, else
        ``network.EDGE_HEADS``); edge masks given as arrays or callables bind every head, as
        they always did."""
        if not isinstance(self.edge_masks, DAG):
            return None
        return network_module.edge_heads(self.n_heads, self.edge_masks.heads)

    def _split_rows(self, Z: torch.Tensor, seeds: FitSeeds
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training rows and validation rows (None without a validation set)."""
        n_val = int(round(self.validation_fraction * Z.shape[0]))
        if Z.shape[0] - n_val < 1:
            n_val = 0
        perm = torch.as_tensor(np.random.default_rng(seeds.split).permutation(Z.shape[0]),
                               device=Z.device)
        return Z[perm[n_val:]], (Z[perm[:n_val]] if n_val else None)

    def _token_columns(self, layout: Layout, positions: bool = False) -> list[list[int]]:
        """The columns of each token (``tokens`` resolved by the layout; "auto" keeps one per
        column with positions or exchangeable variables, whose identities are shared)."""
        return layout.token_columns(self.tokens, positions or bool(self.exchangeable))

    def _resolve_batch_size(self, n_train: int, device: torch.device) -> int:
        if self.batch_size == "auto":
            return min(4096 if device.type == "cuda" else 512, max(32, n_train // 16))
        return int(self.batch_size)

    def _train_config(self, model: SimformerModel | None = None,
                      batch_size: int | None = None) -> TrainConfig:
        """The loop's settings from the parameters and ``training_options`` (checked), with
        ``batch_size_`` unless ``batch_size`` is given."""
        from_parameters = dict(
            max_epochs=self.max_epochs,
            batch_size=self.batch_size_ if batch_size is None else batch_size,
            learning_rate=self.learning_rate,
            marginal_fraction=float(self.marginal_fraction),
            early_stopping=self.early_stopping,
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
            verbose=self.verbose,
        )
        options = dict(self.training_options or {})
        allowed = sorted(f.name for f in dataclasses.fields(TrainConfig)
                         if f.name not in from_parameters)
        unknown = sorted(set(map(str, options)) - set(allowed))
        if unknown:
            raise ValueError(f"training_options does not take {unknown}; it takes {allowed} "
                             "(the other settings are parameters).")
        if model is not None and model.positions is not None and "subset_columns" not in options:
            # each row keeps a random subset of its readings: any number of them at inference
            options["subset_columns"] = tuple(
                int(c) for v in model.positions.variables for c in model.layout.groups[v])
        config = TrainConfig(**options, **from_parameters)
        config.check()
        return config

    def _record(self, result: TrainResult, continued: bool = False) -> None:
        """The fit's history; ``continued`` (a warm start) appends it to the earlier fits'."""
        self.n_training_rows_ = result.n_rows
        self.converged_ = result.converged
        self.training_time_ = result.seconds + (self.__dict__.get("training_time_", 0.0)
                                                if continued else 0.0)
        if not continued:
            self.loss_curve_ = result.loss_curve
            self.validation_scores_ = result.validation_scores
            self.best_epoch_ = result.best_epoch
            self.n_iter_ = result.n_iter
            return
        offset = len(self.loss_curve_)
        self.loss_curve_ = [*self.loss_curve_, *result.loss_curve]
        self.validation_scores_ = [*self.validation_scores_, *result.validation_scores]
        if result.best_epoch >= 0:  # else the starting weights stay, and their epoch
            self.best_epoch_ = offset + result.best_epoch
        self.n_iter_ += result.n_iter

    def _warn_about(self, result: TrainResult, has_validation: bool) -> None:
        """Say how training ended when it did not settle: diverged, or cut by max_epochs."""
        kept = _kept_weights(result)
        if result.diverged is not None:
            warn(f"training diverged: {result.diverged}. The estimator keeps the weights of "
                 f"{kept}, the best before it; a lower learning_rate "
                 f"({self.learning_rate:g} now) may train further.", RuntimeWarning)
            return
        if result.converged or result.interrupted:
            return
        which = "validation" if has_validation else "training"
        since = result.n_iter - 1 - result.best_epoch
        if since == 0:
            message = (f"max_epochs={self.max_epochs} reached while the {which} loss was still "
                       "improving (its best was the last epoch); consider a larger max_epochs.")
        else:
            last = (f"last improved in epoch {result.best_epoch + 1}" if result.best_epoch >= 0
                    else "never improved on the fit it started from (warm_start)")
            kept = (f"the weights of {kept} were kept"
                    if has_validation else "the last epoch's weights were kept")
            message = (f"max_epochs={self.max_epochs} reached before early stopping could "
                       f"decide: the {which} loss {last} and then not for {since} epochs "
                       f"(n_iter_no_change={self.n_iter_no_change}); {kept}.")
        warn(message, ConvergenceWarning)

    # ------------------------------------------------------------------ inference
    def _conditional(self, condition_columns, edge_columns, returned=None,
                     model: SimformerModel | None = None) -> Conditional:
        return Conditional(self.model_ if model is None else model, condition_columns,
                           edge_columns, returned=returned, solver=self.solver,
                           sampling_steps=self.sampling_steps,
                           log_prob_steps=self.log_prob_steps, bounds=self.bounds,
                           support={"transform": "truncate"}.get(self.support, self.support))

    def _at(self, positions) -> SimformerModel:
        """The fitted model over the tokens ``positions`` asks for (see
        :meth:`SimformerModel.at`): the model itself without positions."""
        model = self.model_
        if positions is None:
            return model.at()
        table = model.positions
        if table is None:
            raise ValueError("positions= applies to a model fitted with positions; this one "
                             "was fitted without.")
        given = parse_positions(positions, model.layout, None, sizes={})
        for v, p in given.items():
            if p.shape[-1] != table.dim:
                raise ValueError(
                    f"positions[{model.layout.names[v]!r}] of shape {p.shape} reads as "
                    f"{p.shape[0]} readings of {p.shape[-1]} coordinates, but the model was "
                    f"fitted with positions of {table.dim}: a conditional takes one set of "
                    f"positions, shape (k,) or (k, {table.dim}), not one per row.")
        for v, p in given.items():
            if v in table.variables:
                table.check_representable(v, p, model.layout.names[v])
            if v in table.variables and table.outside(v, p):
                r = table.variables.index(v)
                low, high = (a[r].tolist() for a in table.seen_range())
                warn(f"positions of {model.layout.names[v]!r} lie outside the training range "
                     f"[{low}, {high}]: the model "
                     "extrapolates there.", UserWarning)
        view = model.at(given)
        view.check_attention()  # before a conditional asks for gigabytes
        return view

    def condition(self, condition_mask, edge_mask=None, positions=None) -> Conditional:
        """The conditional distribution for one condition mask (True = observed).

        Parameters
        ----------
        condition_mask : array-like of bool, one per variable or one per column
        edge_mask : array-like of bool of shape (n_variables, n_variables) or
            (n_columns, n_columns), optional. ``[i, j]`` True lets i attend to j.
        positions : dict, optional
            For a model fitted with positions: ``{name: t_new}`` reads that variable at the
            positions ``t_new`` (shape ``(k,)`` or ``(k, dim)``, any ``k``), so that it has
            ``k`` columns in this conditional (observed, latent or both, as the mask says; a
            mask per column follows the new columns). Variables not named keep their training
            positions (which needs them shared by every training row). Positions outside the
            training range warn that the model extrapolates.

        Returns
        -------
        Conditional

        Examples
        --------
        A model of a function ``x(t) = theta t`` read at 5 random times per simulation, then
        asked for theta from 2 readings at new times:

        >>> import numpy as np
        >>> from skformer import SimformerEstimator
        >>> rng = np.random.default_rng(0)
        >>> theta = rng.normal(size=(400, 1))
        >>> t = rng.uniform(0, 1, size=(400, 5))
        >>> X = np.hstack([theta, theta * t + 0.1 * rng.normal(size=t.shape)])
        >>> est = SimformerEstimator(variables=[1, 5], max_epochs=2, d_model=16, n_layers=1,
        ...                          random_state=0).fit(X, positions={"v1": t})
        >>> post = est.condition([False, True], positions={"v1": [0.2, 0.9]})
        >>> post.observed_names
        ['v1[0]', 'v1[1]']
        >>> post.sample(3, observed=[0.1, 0.5], random_state=0).shape
        (3, 1)
        """
        check_is_fitted(self, "model_")
        model = self._at(positions)
        layout = model.layout
        columns = layout.condition_columns(condition_mask)
        edges = self._edges_for(columns, edge_mask, layout)
        self._check_token_masks(columns, edges)
        return self._conditional(columns, edges, model=model)

    def _edges_for(self, columns: np.ndarray, edge_mask,
                   layout: Layout | None = None) -> np.ndarray | None:
        """The column edge mask of a conditional: the one given, else the declared DAG's for
        this condition (when ``edge_masks`` is a :class:`~skformer.graph.DAG`), else None."""
        layout = self.layout_ if layout is None else layout
        if edge_mask is None and isinstance(self.edge_masks, DAG):
            observed = layout.variable_condition(columns)
            edge_mask = self.edge_masks.mask(observed, layout.n_variables, layout.names)
        return layout.edge_columns(edge_mask)

    def _check_token_masks(self, columns: np.ndarray, edges: np.ndarray | None) -> None:
        """With several columns per token, an edge mask must treat a token's columns alike
        (a condition mask may split a token: each column keeps its own state)."""
        groups = self.network_.groups
        if groups is None or edges is None:
            return
        token = np.empty(len(columns), dtype=np.int64)
        for t, g in enumerate(groups):
            token[g] = t
        firsts = [g[0] for g in groups]
        blocks = edges[np.ix_(firsts, firsts)][np.ix_(token, token)]
        if not np.array_equal(edges, blocks | np.eye(len(columns), dtype=bool)):
            raise ValueError(
                "edge_mask differs between columns of one token (token_columns_): give it "
                "per variable, or fit with tokens='column'."
            )

    def _split_conditional(self, observed_vars: list[int], returned_vars: list[int], edge_mask,
                           positions=None):
        model = self._at(positions)
        layout = model.layout
        var_mask = np.zeros(layout.n_variables, dtype=bool)
        var_mask[observed_vars] = True
        keep = np.isin(layout.column_variable, returned_vars)
        columns = layout.condition_columns(var_mask)
        return self._conditional(columns, self._edges_for(columns, edge_mask, layout),
                                 returned=keep, model=model)

    def posterior(self, edge_mask=None, positions=None) -> Conditional:
        """p(posterior_latent | posterior_observed); other variables are marginalised out.
        ``positions`` as in :meth:`condition`."""
        check_is_fitted(self, "model_")
        latent, observed = self._posterior_indexes(self.layout_)
        return self._split_conditional(observed, latent, edge_mask, positions)

    def likelihood(self, edge_mask=None, positions=None) -> Conditional:
        """p(posterior_observed | posterior_latent); other variables are marginalised out.
        ``positions`` as in :meth:`condition` (e.g. a dense grid: the likelihood as a
        function)."""
        check_is_fitted(self, "model_")
        latent, observed = self._posterior_indexes(self.layout_)
        return self._split_conditional(latent, observed, edge_mask, positions)

    def set_condition_indexes(self, new_posterior_latent_idx=None,
                              new_posterior_observed_idx=None):
        """Set which variables ``posterior()`` treats as latent (theta) and observed (x).

        The seed tutorial's name for ``set_params(posterior_latent=...,
        posterior_observed=...)``.

        Parameters
        ----------
        new_posterior_latent_idx, new_posterior_observed_idx : list of int, optional
            Variable indexes from the posterior's point of view; None leaves one unchanged.

        Returns
        -------
        self
        """
        changes = {}
        if new_posterior_latent_idx is not None:
            changes["posterior_latent"] = list(new_posterior_latent_idx)
        if new_posterior_observed_idx is not None:
            changes["posterior_observed"] = list(new_posterior_observed_idx)
        return self.set_params(**changes)

    def _joint(self) -> Conditional:
        check_is_fitted(self, "model_")
        model = self.model_.at()
        return self._conditional(np.zeros(model.layout.n_columns, dtype=bool), None,
                                 model=model)

    def score_samples(self, X):
        """Joint log density of each row, by the probability-flow ODE (exact divergence up to
        16 columns, Hutchinson's estimator above; ``log_prob_steps`` steps).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_columns) or (n_samples, n_variables, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            Log density in the units of X.
        """
        joint = self._joint()
        with torch_threads(self.n_threads):
            return joint.log_prob(self._validate_X(X, reset=False))

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
        joint = self._joint()
        with torch_threads(self.n_threads):
            return joint.sample(n_samples, random_state=random_state)

    # ------------------------------------------------------------------ description
    def _describe(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A plain description of this estimator and its weights, for persistence.

        Returns ``(description, tensors)``: the description holds the class name, the skformer
        version, the parameters, the fitted attributes other than the model, and the model's
        own description (:meth:`SimformerModel.describe`) when fitted; ``tensors`` is the
        model's ``state_dict`` as CPU copies. No training data: the estimator keeps none.
        """
        params = self.get_params(deep=False)
        if isinstance(params["edge_masks"], DAG):  # plain values: a tagged mapping
            params["edge_masks"] = {"__skformer__": "DAG", **params["edge_masks"].to_dict()}
        # private attributes (partial_fit's optimiser) are working state, not description
        fitted = {k: v for k, v in vars(self).items()
                  if k not in params and k != "model_" and not k.startswith("_")}
        description = {"estimator": type(self).__name__,
                       "skformer_version": _version.__version__,
                       "params": params, "fitted": fitted}
        tensors: dict[str, torch.Tensor] = {}
        model = self.__dict__.get("model_")
        if model is not None:
            description["model"] = model.describe()
            tensors = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return description, tensors

    @classmethod
    def _from_description(cls, description: dict[str, Any], tensors: dict[str, torch.Tensor],
                          validate: bool = True) -> SimformerEstimator:
        """Inverse of :meth:`_describe`; raises ValueError for anything :meth:`_describe` would
        not have written. The model goes to ``resolve_device(device)``.

        ``validate``: check the parameters with the estimator's own rules (for files from
        anywhere). A pickle, trusted by definition, comes back as it went, parameters that
        ``fit`` would refuse included.
        """
        name = description.get("estimator")
        if name != cls.__name__:
            raise ValueError(f"the description is of a {name!r}; expected a {cls.__name__}.")
        _version.check_version(description.get("skformer_version"), cls.__name__)
        est = cls()
        known = est.get_params(deep=False)
        params, fitted = description.get("params"), description.get("fitted")
        if not isinstance(params, dict) or not isinstance(fitted, dict):
            raise ValueError("the description needs 'params' and 'fitted' mappings.")
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(
                f"parameters {unknown} are not parameters of this skformer's {cls.__name__} "
                f"(it has {sorted(known)}); written by skformer "
                f"{description.get('skformer_version')}."
            )
        bad = sorted(
            str(k) for k in fitted
            if not isinstance(k, str) or not k.isidentifier() or k.startswith("__")
            or k in known or hasattr(cls, k) or k == "model_"
        )
        if bad:
            raise ValueError(
                f"fitted attribute names must be new identifiers that shadow no parameter or "
                f"method; got {bad}."
            )
        edges = params.get("edge_masks")
        if isinstance(edges, dict) and edges.get("__skformer__") == "DAG":
            params = {**params, "edge_masks": DAG.from_dict(edges)}
        est.set_params(**params)
        if validate:
            est._validate_params()
        if "model" in description:
            try:
                device = resolve_device(est.device)
            except ValueError as err:
                if validate:
                    raise
                # a pickle holds what the estimator held: a device set after the fit that no
                # machine has must not lose the model
                warn(f"{err} The model loads on the CPU.", RuntimeWarning)
                device = torch.device("cpu")
            est.model_ = SimformerModel.from_description(description["model"], dict(tensors),
                                                         device)
            if validate:
                _check_fitted(est, fitted)
        elif tensors:
            raise ValueError("the description holds weights but no model.")
        vars(est).update(fitted)
        if validate and "model" in description:
            _check_layout_agrees(est)
        return est

    def _check_loadable(self) -> None:
        """The checks a loader makes of a fitted estimator's parameters against its model
        (``save`` runs them first, so that it never writes a file load refuses)."""
        self._validate_params()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unavailable GPU falls back; a malformed one not
            resolve_device(self.device)
        _check_fitted(self, vars(self))
        _check_layout_agrees(self)

    def __getstate__(self) -> dict[str, Any]:
        description, tensors = self._describe()
        return {"description": description, "tensors": tensors}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "description" not in state:  # pickled by skformer 0.1
            state = pickle_state_to_description(state)
        restored = type(self)._from_description(state["description"], state["tensors"],
                                                validate=False)
        self.__dict__.update(restored.__dict__)


def _splits_tokens(model: SimformerModel) -> bool:
    """Whether the model's tokens carry several columns (training then draws masks that
    observe part of a token)."""
    return any(len(g) > 1 for g in model.network.groups or [])


def _check_step_memory(model: SimformerModel, rows: int, device: torch.device) -> None:
    """Refuse a training step whose attention alone (every layer's, kept for the backward
    pass) is more than the device holds: the allocator's error comes after minutes of setup
    and names nothing a user set."""
    T = model.network.n_token_slots
    check_fits_in_memory(
        model.attention_bytes(rows, backward=True), device,
        f"a training step of {rows} rows (batch_size) over {T} tokens (columns; tokens=k "
        "carries several per token)")


def _check_new_rows(model: SimformerModel, X: np.ndarray) -> None:
    """Rows that continue a fitted model (warm start, partial_fit) are read in its units: refuse
    values the network's float32 arithmetic cannot take there, as inference does."""
    st = model.standardiser
    with np.errstate(over="ignore"):
        z = np.abs((to_numpy(st.unbound(torch.as_tensor(X, device=st.mean.device)))
                    - to_numpy(st.mean)) / to_numpy(st.scale))
    far = ~(np.nan_to_num(z, nan=0.0) <= MAX_STANDARD_UNITS)
    if far.any():
        column = model.layout.column_names[int(np.flatnonzero(far.any(0))[0])]
        raise ValueError(
            f"X holds values more than {MAX_STANDARD_UNITS:g} standard deviations from the "
            f"fitted model's mean (e.g. in column {column!r}); the model continues in its own "
            "units, which cannot take them. Fit afresh (warm_start=False) on data of this scale."
        )


def _check_new_positions(model: SimformerModel, table: PositionTable) -> None:
    """Positions of rows that continue a fitted model are read in its units: refuse what a
    conditional would refuse there."""
    low, high = table.seen_range()
    for r, v in enumerate(table.variables):
        model.positions.check_representable(v, np.stack([low[r], high[r]]),
                                            model.layout.names[v])


def _check_layout_agrees(est: SimformerEstimator) -> None:
    """A loaded estimator's parameters lay out the columns as its model does, and pass fit's
    own checks against that layout (bounds, posterior split, training masks)."""
    layout = est.model_.layout
    try:
        stated = est._make_layout(layout.n_columns)
    except ValueError as err:
        raise ValueError(f"the parameters do not lay out the model's {layout.n_columns} "
                         f"columns: {err}") from err
    est._make_dynamics()  # dynamics_options and training_options as fit checks them
    est._train_config(batch_size=1)
    if stated.groups != layout.groups or stated.names != layout.names:
        said = dict(zip(stated.names, stated.groups, strict=True))
        model = dict(zip(layout.names, layout.groups, strict=True))
        raise ValueError(f"the parameters lay out the columns as variables {said} but the "
                         f"model has {model}.")
    est._check_layout(layout)


def _dict_groups(spec: dict, n_columns: int, names) -> list | list[list[int]]:
    """``variables`` as ``{name: size}`` -> sizes; as ``{name: columns}`` -> column indexes
    (DataFrame column names looked up in ``names``).

    Files and code from before sizes were read this way gave a single column as a bare index
    (``{"a": 0, "b": 1}``); such a dict (distinct indexes 0..n-1, one column each) can never be
    valid sizes (it holds a 0), so it still reads as indexes."""
    values = list(spec.values())

    def bare(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if values and all(bare(v) for v in values):
        ints = [int(v) for v in values]
        if sorted(ints) == list(range(n_columns)):
            return [[c] for c in ints]
        return ints
    if any(bare(v) for v in values):
        raise ValueError(
            f"variables mixes sizes and lists of columns: {spec!r}. Give every variable its size "
            "({'theta': 2, 'x': 20}) or every variable its columns as a list "
            "({'theta': [0, 1], 'x': [2, 3]})."
        )
    lookup = {str(n): i for i, n in enumerate(names)} if names is not None else {}

    def col(c):
        if isinstance(c, str):
            if c not in lookup:
                raise ValueError(f"variables names column {c!r}, which X does not have.")
            return lookup[c]
        return c  # an index: Layout.from_spec checks it

    def columns(name, cols) -> list:
        if isinstance(cols, str):
            return [col(cols)]
        if isinstance(cols, (set, frozenset, dict)) or not hasattr(cols, "__iter__"):
            raise ValueError(f"variables[{name!r}] must be a size or a list of columns (indexes "
                             f"or names, in order); got {cols!r}.")
        return [col(c) for c in cols]

    return [columns(name, cols) for name, cols in spec.items()]


def _kept_weights(result: TrainResult) -> str:
    """Which weights a fit kept, in words."""
    if result.best_epoch >= 0:
        return f"epoch {result.best_epoch + 1}"
    return "the fit it started from (warm_start)"


def _check_fitted(est: SimformerEstimator, fitted: dict[str, Any]) -> None:
    """A loaded model agrees with the parameters and attributes that describe it."""
    model = est.model_
    arch = model.network.config()
    stated = {"d_model": est.d_model, "n_layers": est.n_layers, "n_heads": est.n_heads,
              "method": est.method}
    actual = {**{k: arch[k] for k in ("d_model", "n_layers", "n_heads")},
              "method": model.dynamics.name}
    if est.method == "score":
        stated["sde"], actual["sde"] = est.sde, model.dynamics.sde
    # one token per column (no groups): the network's order of columns is the layout's, so
    # the tokens' order (variable by variable) does not describe it
    tokens = fitted.get("token_columns_")
    if model.network.groups is None and isinstance(tokens, list) \
            and all(isinstance(g, list) and len(g) == 1 and type(g[0]) is int for g in tokens):
        tokens = sorted(tokens)
    groups = model.network.groups or [[c] for c in range(model.layout.n_columns)]
    stated["tokens"], actual["tokens"] = tokens, groups
    if stated != actual:
        raise ValueError(f"the parameters {stated} do not describe the model {actual}.")
    T = model.layout.n_columns
    n = fitted.get("n_features_in_", T)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n != T:
        raise ValueError(f"n_features_in_ is {n!r} but the model has {T} columns.")
    names = fitted.get("feature_names_in_")
    if names is not None and (not isinstance(names, np.ndarray) or names.shape != (T,)):
        raise ValueError(f"feature_names_in_ must be an array of {T} names; got {names!r}.")
    shape = fitted.get("input_shape_")
    if shape is not None and not (
            isinstance(shape, tuple) and len(shape) == 2
            and all(isinstance(s, int) and s >= 1 for s in shape) and shape[0] * shape[1] == T):
        raise ValueError(f"input_shape_ must be None or (n_variables, n_features) with "
                         f"{T} columns in all; got {shape!r}.")
