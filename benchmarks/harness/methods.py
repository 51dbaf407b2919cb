"""Method runners: skformer (score, flow) and sbi's NPE, NPSE and FMPE on the same simulations.

Each runner trains once on (theta, x) of a task (``fit``) and then answers observations from
the trained model: ``sample`` (posterior samples for x_o, and the network calls per sample),
``log_prob`` (posterior log density) and, for skformer only, ``sample_conditional`` (any
condition mask). Runners are settings-free apart from what :class:`Settings` carries: defaults
of each library unless ``quick`` or ``max_epochs`` say otherwise.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from harness import MissingDependency
from harness.tasks import Task

__all__ = ["METHODS", "Settings", "get_runner", "SBI_HINT"]

SBI_HINT = "pip install sbi"

#: tiny skformer settings of quick mode
QUICK_SKFORMER = dict(max_epochs=3, d_model=16, n_layers=1)
QUICK_SBI_EPOCHS = 3


@dataclass
class Settings:
    device: str = "cpu"
    quick: bool = False
    max_epochs: int | None = None  # overrides every method's maximum number of epochs
    #: extra SimformerEstimator parameters (``--skformer key=value``)
    skformer: dict | None = None
    #: "task": the task's own variables; "theta-x": theta and x as two variables;
    #: "structure": those of the task's declared structure (``Task.STRUCTURE``)
    variables: str = "task"
    #: share of the training entries set missing (NaN) at random, for skformer
    missing: float = 0.0
    #: the task's DAG as skformer's edge_masks, with this inversion ("faithful" / "moral")
    dag: str | None = None
    #: declare the task's exchangeable variables (its structure's) to skformer
    exchangeable: bool = False
    #: declare the posterior split to skformer (False: its masks serve every conditional)
    split: bool = True
    #: skformer saves its training state here, and a fit cut off resumes (not in the config)
    checkpoint_dir: str | None = None


@dataclass
class Trained:
    """A trained model and what training cost."""

    model: object
    train_s: float
    epochs: int | None = None


class Runner:
    name = ""
    conditionals = False  # answers every conditional (else: only the posterior)

    def check(self) -> None:
        """Raise MissingDependency when the runner cannot run here."""

    def fit(self, task: Task, theta, x, settings: Settings, seed: int) -> Trained:
        raise NotImplementedError

    def sample(self, trained: Trained, task: Task, x_o, n: int, seed: int):
        """(samples (n, dim_theta), network calls per sample or None)."""
        raise NotImplementedError

    def log_prob(self, trained: Trained, task: Task, theta, x_o) -> np.ndarray | None:
        return None

    def sample_conditional(self, trained, task, mask, values, n, seed):
        raise NotImplementedError(f"{self.name} answers only the posterior.")


# --------------------------------------------------------------------------- skformer
def skformer_layout(task: Task, variables: str = "task", split: bool = True) -> dict:
    """The ``variables`` / ``posterior_latent`` / ``posterior_observed`` a task is fitted with:
    its own ("task"), theta and x as two variables ("theta-x", for tasks without a DAG), or
    those of its declared structure ("structure"); without ``split``, no posterior split is
    declared."""
    if variables == "structure":
        structure = _structure(task)
        out = dict(variables=structure["variables"] or task.variables,
                   posterior_latent=structure["latent"],
                   posterior_observed=structure["observed"])
    elif variables == "theta-x" and not hasattr(task, "PARENTS"):  # a DAG keeps its variables
        out = dict(variables=[task.dim_theta, task.dim_x], posterior_latent=[0],
                   posterior_observed=[1])
    else:
        out = dict(variables=task.variables, posterior_latent=task.latent,
                   posterior_observed=task.observed)
    if not split:
        out.update(posterior_latent=None, posterior_observed=None)
    return out


def with_missing(X: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """X with ``fraction`` of its entries set to NaN, at random (MCAR), seeded."""
    if not fraction:
        return X
    rng = np.random.default_rng([seed, 7919])
    X = np.array(X, dtype=np.float64, copy=True)
    flat = X.reshape(len(X), -1)
    flat[rng.random(flat.shape) < fraction] = np.nan
    return flat.reshape(X.shape)


def prior_bounds(task: Task) -> dict | None:
    """The task prior's support box as ``SimformerEstimator(bounds=...)`` over the theta
    columns (None when the prior states none), so that skformer's posteriors stay inside the
    prior's support as sbi's do."""
    from skformer.simulation import prior_bounds as bounds_of

    n_theta = task.prior_torch().sample((1,)).reshape(1, -1).shape[1]
    return bounds_of(task.prior_torch(), n_theta)


def _structure(task: Task) -> dict:
    if task.STRUCTURE is None:
        raise ValueError(f"task {task.name} declares no structure (Task.STRUCTURE).")
    return task.STRUCTURE


def fit_skformer(task: Task, theta, x, seed: int, variables: str = "task",
                 missing: float = 0.0, dag: str | None = None, split: bool = True,
                 exchangeable: bool = False, **kwargs):
    """Fit a SimformerEstimator on a task's simulations (its defaults unless ``kwargs`` say
    otherwise); return (estimator, training seconds). ``missing`` sets that share of the
    training entries to NaN; ``dag`` gives the task's DAG as ``edge_masks`` and
    ``exchangeable`` its exchangeable variables (either fits the variables of the task's
    structure). Running out of epochs is not an error here: the ``epochs`` column records
    it."""
    from sklearn.exceptions import ConvergenceWarning

    from skformer import SimformerEstimator
    from skformer.graph import DAG

    if kwargs.get("bounds") == "prior":  # --skformer bounds=prior: the prior's box, if any
        kwargs["bounds"] = prior_bounds(task)
    if dag is not None or exchangeable:
        structure = _structure(task)
        variables = "structure"
        if dag is not None:
            kwargs["edge_masks"] = DAG(structure["parents"], inversion=dag)
        if exchangeable:
            if not structure["exchangeable"]:
                raise ValueError(f"task {task.name} declares no exchangeable variables.")
            kwargs["exchangeable"] = structure["exchangeable"]
    est = SimformerEstimator(**skformer_layout(task, variables, split), random_state=seed,
                             **kwargs)
    X = with_missing(task.joint(theta, x), missing, seed)
    evaluate = skformer_layout(task, variables)  # the posterior scored, split or not in fit
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    # a fit resumed from a checkpoint: its training time includes the earlier processes'
    elapsed = max(time.perf_counter() - start, est.training_time_)
    est.set_params(posterior_latent=evaluate["posterior_latent"],
                   posterior_observed=evaluate["posterior_observed"])  # inference only
    return est, elapsed


class SkformerRunner(Runner):
    conditionals = True

    def __init__(self, method: str):
        self.method = method
        self.name = f"skformer_{method}"

    def fit(self, task, theta, x, settings, seed):
        kwargs = dict(QUICK_SKFORMER) if settings.quick else {}
        if settings.max_epochs is not None:
            kwargs["max_epochs"] = settings.max_epochs
        kwargs.update(settings.skformer or {})
        if settings.checkpoint_dir is not None:
            kwargs["training_options"] = {**(kwargs.get("training_options") or {}),
                                          "checkpoint_dir": settings.checkpoint_dir}
        est, train_s = fit_skformer(task, theta, x, seed, variables=settings.variables,
                                    missing=settings.missing, dag=settings.dag,
                                    exchangeable=settings.exchangeable,
                                    split=settings.split, method=self.method,
                                    device=settings.device, **kwargs)
        return Trained(est, train_s, est.n_iter_)

    def sample(self, trained, task, x_o, n, seed):
        post = trained.model.posterior()
        return post.sample(n, observed=x_o, random_state=seed), post.network_calls()

    def log_prob(self, trained, task, theta, x_o):
        return trained.model.posterior().log_prob(theta, observed=x_o)

    def _conditional(self, trained, task, mask):
        est = trained.model
        return est.condition(np.asarray(mask, dtype=bool))

    def sample_conditional(self, trained, task, mask, values, n, seed):
        cond = self._conditional(trained, task, mask)
        return cond.sample(n, observed=values, random_state=seed), cond.network_calls()

    def conditional_log_prob(self, trained, task, mask, latent, values):
        return self._conditional(trained, task, mask).log_prob(latent, observed=values)


# --------------------------------------------------------------------------- sbi
class _RowCounter:
    """Forward hook counting the rows a vector-field network evaluates (per sample: network
    calls, rejection overhead included)."""

    def __init__(self, dim):
        self.dim, self.rows = dim, 0

    def __call__(self, module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        if isinstance(x, torch.Tensor):
            self.rows += x.numel() // self.dim


class _NullTracker:
    """sbi's Tracker protocol, logging nothing (sbi's default writes TensorBoard files to
    ./sbi-logs); training itself is unchanged."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def sbi_quiet(inference_class) -> dict:
    """Keyword arguments that keep an sbi inference class from writing TensorBoard files to
    ./sbi-logs (a tracker that logs nothing, where the installed sbi takes one)."""
    if "tracker" in inspect.signature(inference_class.__init__).parameters:
        return {"tracker": _NullTracker()}
    return {}


class SbiRunner(Runner):
    def __init__(self, name: str):
        self.name = name

    def check(self):
        if importlib.util.find_spec("sbi") is None:
            raise MissingDependency(f"method {self.name!r} needs sbi, which is not installed: "
                                    f"{SBI_HINT}")

    def fit(self, task, theta, x, settings, seed):
        self.check()
        if settings.missing:
            raise MissingDependency(f"{self.name} cannot fit simulations with missing values")
        from sbi.inference import FMPE, NPE, NPSE

        torch.manual_seed(seed)
        prior = task.prior_torch(settings.device)
        common = dict(prior=prior, device=settings.device, show_progress_bars=False,
                      **sbi_quiet(NPE))
        if self.name == "npe":
            inference = NPE(density_estimator="nsf", **common)
        elif self.name == "npse":
            inference = NPSE(**common)
        else:
            inference = FMPE(**common)
        th = torch.as_tensor(theta, dtype=torch.float32)
        xs = torch.as_tensor(x, dtype=torch.float32)
        inference.append_simulations(th, xs)
        train_kwargs = {}
        if settings.quick:
            train_kwargs["max_num_epochs"] = QUICK_SBI_EPOCHS
        if settings.max_epochs is not None:
            train_kwargs["max_num_epochs"] = settings.max_epochs
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator = inference.train(**train_kwargs)
            posterior = inference.build_posterior(estimator)
        train_s = time.perf_counter() - start
        epochs = None
        summary = getattr(inference, "summary", None) or getattr(inference, "_summary", None)
        if isinstance(summary, dict) and summary.get("epochs_trained"):
            epochs = int(summary["epochs_trained"][-1])
        return Trained(posterior, train_s, epochs)

    def _x(self, x_o, posterior):
        device = getattr(posterior, "_device", "cpu")
        return torch.as_tensor(np.asarray(x_o), dtype=torch.float32, device=device)[None]

    def sample(self, trained, task, x_o, n, seed):
        posterior = trained.model
        torch.manual_seed(seed)
        # the inner network of sbi's vector-field estimators: the estimator's own forward is
        # called directly by the ODE solver (no hooks), its `net` always through __call__
        estimator = getattr(posterior, "vector_field_estimator", None)
        net = getattr(estimator, "net", estimator)
        hook = counter = None
        if isinstance(net, torch.nn.Module):
            counter = _RowCounter(task.dim_theta)
            hook = net.register_forward_hook(counter, with_kwargs=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = posterior.sample((n,), x=self._x(x_o, posterior), show_progress_bars=False)
        finally:
            if hook is not None:
                hook.remove()
        if self.name == "npe":
            calls = 1.0  # one pass through the flow (rejections outside the prior aside)
        elif counter is not None and counter.rows:
            calls = counter.rows / n
        else:
            calls = None
        return s.detach().cpu().numpy().astype(np.float64), calls

    def log_prob(self, trained, task, theta, x_o):
        posterior = trained.model
        device = getattr(posterior, "_device", "cpu")
        th = torch.as_tensor(theta, dtype=torch.float32, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lp = posterior.log_prob(th, x=self._x(x_o, posterior))
        return lp.detach().cpu().numpy().astype(np.float64)


METHODS = {
    "skformer_score": lambda: SkformerRunner("score"),
    "skformer_flow": lambda: SkformerRunner("flow"),
    "npe": lambda: SbiRunner("npe"),
    "npse": lambda: SbiRunner("npse"),
    "fmpe": lambda: SbiRunner("fmpe"),
}


def get_runner(name: str) -> Runner:
    """The runner called ``name``; ValueError listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}.")
    return METHODS[name]()
