"""Task registry: prior, simulator, observations and reference samples of each benchmark task.

Every task simulates the joint ``[theta, x]`` in plain numpy / torch (no pyro, no sbibm import)
and says how its columns group into variables (``variables``, for skformer) and which variables
are latent (theta) and observed (x) for the posterior.

- ``seed``: theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 noise; exact references (truncated normal
  posterior), observations drawn from the prior (any number of them).
- ``gaussian_linear``, ``two_moons``, ``gaussian_mixture``, ``slcp``, ``bernoulli_glm``: the
  sbibm tasks, simulators re-implemented from sbibm's task definitions; observations 1..10 and
  their 10,000 reference posterior samples read from the files the ``sbibm`` package ships
  (``sbibm/tasks/<task>/files/num_observation_<k>/``), located without importing sbibm.
- ``gaussian_curve``: 8 parameters and a curve of 96 readings (104 columns, linear-Gaussian):
  exact posterior and conditionals; the wide task of the fit-cost issue.
- ``gaussian_dag``: a linear-Gaussian DAG over 12 scalar variables (fixed weights): exact
  samples of every conditional by Gaussian conditioning. Scored on the posterior (variables 0-3
  given 4-11) and on all conditionals: observation k is a random condition mask and a joint
  draw, both seeded by k; the mean C2ST over observations is the mean over random masks.
"""

from __future__ import annotations

import importlib.util
import math
import zlib
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from harness import MissingDependency

__all__ = ["TASKS", "Task", "get_task", "GaussianDAG"]

SBIBM_HINT = "pip install --no-deps sbibm  (plus pandas to read its files)"


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by a tuple of ints / strings (strings hashed by crc32)."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


class Task:
    """Base class. Subclasses set the class attributes and implement ``simulate``,
    ``prior_torch``, ``observation`` and ``reference``."""

    name: str = ""
    dim_theta: int = 0
    dim_x: int = 0
    #: skformer's ``variables`` (None: one variable per column; else theta's columns and x's as
    #: two variables, ``[dim_theta, dim_x]``)
    variables = None
    #: the targets scored: "posterior" for all; "conditionals" where exact conditionals exist
    targets: tuple[str, ...] = ("posterior",)
    #: number of observations available (None: unlimited)
    n_observations: int | None = 10
    #: pip hint if the task needs an optional package
    requires: str | None = None
    #: the simulator's declared structure for skformer (None: the task declares none):
    #: ``variables`` (None: the task's own), ``parents`` (variable -> parent variables, for
    #: ``skformer.DAG``), ``exchangeable`` (sets of iid draws given their parents), and the
    #: posterior's ``latent`` / ``observed`` variables under those variables
    STRUCTURE: dict | None = None

    # variable indexes (skformer's posterior_latent / posterior_observed)
    @property
    def latent(self) -> list[int]:
        return list(range(self.n_theta_vars))

    @property
    def observed(self) -> list[int]:
        return list(range(self.n_theta_vars, self.n_variables))

    @property
    def n_theta_vars(self) -> int:
        return self.dim_theta if self.variables is None else 1

    @property
    def n_variables(self) -> int:
        return self.dim_theta + self.dim_x if self.variables is None else len(self.variables)

    def check(self) -> None:
        """Raise MissingDependency if the task cannot run here."""

    def simulate(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """n draws of (theta, x) from the prior and the simulator, float64 arrays."""
        raise NotImplementedError

    def joint(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.concatenate([theta, x], axis=1)

    def prior_torch(self, device="cpu") -> torch.distributions.Distribution:
        """The prior as a torch distribution (for sbi)."""
        raise NotImplementedError

    def observation(self, k: int) -> np.ndarray:
        """x_o of observation k (1-based), shape (dim_x,)."""
        raise NotImplementedError

    def reference(self, k: int, n: int, seed: int = 0) -> np.ndarray:
        """n reference posterior samples for observation k, shape (n, dim_theta)."""
        raise NotImplementedError

    def exact_log_prob(self, k: int, theta: np.ndarray) -> np.ndarray | None:
        """Exact posterior log density where known (else None)."""
        return None

    def check_observation(self, k: int) -> None:
        if k < 1 or (self.n_observations is not None and k > self.n_observations):
            limit = "" if self.n_observations is None else f"1..{self.n_observations}"
            raise ValueError(f"task {self.name!r} has observations {limit}; got {k}.")


# --------------------------------------------------------------------------- seed task
class SeedTask(Task):
    """theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 noise; two variables of three columns."""

    name = "seed"
    dim_theta = 3
    dim_x = 3
    variables = [3, 3]
    STRUCTURE = dict(variables=[3, 3], parents={1: [0]}, exchangeable=[], latent=[0],
                     observed=[1])
    n_observations = None

    def simulate(self, n, seed):
        from seed_task import simulate

        X = simulate(n, seed)
        return X[:, 0], X[:, 1]

    def prior_torch(self, device="cpu"):
        low = -torch.ones(3, device=device)
        return torch.distributions.Independent(torch.distributions.Uniform(low, -low), 1)

    def _theta_o(self, k):
        rng = _rng("seed-observation", k)
        theta = rng.uniform(-1, 1, size=3)
        return theta, theta + 1.0 + 0.1 * rng.standard_normal(3)

    def observation(self, k):
        self.check_observation(k)
        return self._theta_o(k)[1]

    def reference(self, k, n, seed=0):
        from seed_task import exact_posterior

        return exact_posterior(self.observation(k), n, seed)

    def exact_log_prob(self, k, theta):
        from seed_task import exact_log_prob

        return exact_log_prob(self.observation(k), theta)


# --------------------------------------------------------------------------- sbibm tasks
def sbibm_files(task: str) -> Path:
    """Folder of sbibm's files for ``task``, found without importing sbibm (whose import
    needs pyro and an old sbi)."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            f"task {task!r} needs the reference samples shipped with sbibm, which is not "
            f"installed: {SBIBM_HINT}."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks" / task / "files"
    if not path.is_dir():
        raise MissingDependency(f"sbibm is installed but has no files for {task!r} ({path}).")
    return path


def _read_csv(path: Path) -> np.ndarray:
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover
        raise MissingDependency("reading sbibm's files needs pandas: pip install pandas") from err
    return pd.read_csv(path).to_numpy(dtype=np.float64)


class SbibmTask(Task):
    requires = SBIBM_HINT

    def check(self):
        sbibm_files(self.name)

    def _file(self, k, name):
        self.check_observation(k)
        return sbibm_files(self.name) / f"num_observation_{k}" / name

    def observation(self, k):
        return _read_csv(self._file(k, "observation.csv"))[0]

    def true_parameters(self, k):
        return _read_csv(self._file(k, "true_parameters.csv"))[0]

    def reference(self, k, n, seed=0):
        ref = self._reference_cache(k)
        if n > len(ref):
            raise ValueError(f"{self.name} ships {len(ref)} reference samples; asked for {n}.")
        if n == len(ref):
            return ref
        return ref[np.random.default_rng(seed).choice(len(ref), n, replace=False)]

    def _reference_cache(self, k):
        cache = self.__dict__.setdefault("_refs", {})
        if k not in cache:
            cache[k] = _read_csv(self._file(k, "reference_posterior_samples.csv.bz2"))
        return cache[k]

    def simulate(self, n, seed):
        rng = _rng(self.name, "simulate", seed, n)
        theta = self.sample_prior(n, rng)
        return theta, self.simulator(theta, rng)

    def sample_prior(self, n, rng):
        raise NotImplementedError

    def simulator(self, theta, rng):
        raise NotImplementedError


def _box(low, high, dim, device):
    lo = torch.full((dim,), float(low), device=device)
    return torch.distributions.Independent(
        torch.distributions.Uniform(lo, torch.full((dim,), float(high), device=device)), 1
    )


# --------------------------------------------------------------------------- Gaussian joints
class GaussianJoint:
    """Exact conditionals of a Gaussian joint N(``mean``, ``cov``) over all columns, for any
    condition mask over the columns (True = observed)."""

    mean: np.ndarray
    cov: np.ndarray

    def conditional(self, mask, values) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the latent columns (mask False) given the observed ones
        (mask True) at ``values`` (one per observed column, in order)."""
        mask = np.asarray(mask, dtype=bool)
        o, u = np.flatnonzero(mask), np.flatnonzero(~mask)
        if len(u) == 0:
            raise ValueError("the condition mask observes every variable.")
        mu, S = self.mean, self.cov
        if len(o) == 0:
            return mu[u].copy(), S[np.ix_(u, u)].copy()
        K = np.linalg.solve(S[np.ix_(o, o)], S[np.ix_(o, u)]).T  # S_uo S_oo^-1
        mean = mu[u] + K @ (np.asarray(values, dtype=np.float64) - mu[o])
        cov = S[np.ix_(u, u)] - K @ S[np.ix_(o, u)]
        return mean, (cov + cov.T) / 2

    def sample_conditional(self, mask, values, n, seed=0) -> np.ndarray:
        mean, cov = self.conditional(mask, values)
        rng = np.random.default_rng(seed)
        return mean + rng.standard_normal((n, len(mean))) @ np.linalg.cholesky(cov).T

    def conditional_log_prob(self, mask, values, latent) -> np.ndarray:
        from scipy.stats import multivariate_normal

        mean, cov = self.conditional(mask, values)
        return np.atleast_1d(multivariate_normal(mean, cov).logpdf(latent))


def split_mask(rng: np.random.Generator, dim_theta: int, dim_x: int,
               theta_observed: int | None = None, x_observed: int | None = None) -> np.ndarray:
    """A column mask that splits both theta and x: the given number of each observed (chosen
    at random), or each column observed with probability 1/2, at least one observed and one
    latent in each."""
    parts = []
    for dim, k in ((dim_theta, theta_observed), (dim_x, x_observed)):
        if k is None:
            while True:
                m = rng.random(dim) < 0.5
                if 0 < m.sum() < dim:
                    break
        else:
            m = np.zeros(dim, dtype=bool)
            m[rng.choice(dim, k, replace=False)] = True
        parts.append(m)
    return np.concatenate(parts)


class ExactGaussianTask(GaussianJoint):
    """A task whose joint is Gaussian and whose observations are joint draws (``_joint_o``):
    posterior references and log densities by exact conditioning."""

    @property
    def posterior_mask(self) -> np.ndarray:
        return np.arange(self.dim_theta + self.dim_x) >= self.dim_theta

    def observation(self, k):
        return self._joint_o(k)[self.dim_theta:]

    def reference(self, k, n, seed=0):
        return self.sample_conditional(self.posterior_mask, self.observation(k), n, seed)

    def exact_log_prob(self, k, theta):
        return self.conditional_log_prob(self.posterior_mask, self.observation(k), theta)


class GaussianLinear(GaussianJoint, SbibmTask):
    """theta ~ N(0, 0.1 I_10), x ~ N(theta, 0.1 I_10) (sbibm's "scale" is a variance).

    Also scored on conditionals within the variables: observation k of that target is a
    random column mask that splits both theta and x (each column observed with probability
    1/2, at least one of each observed and one latent) and a joint draw, both seeded by k;
    the joint is Gaussian, so every conditional is exact."""

    name = "gaussian_linear"
    dim_theta = 10
    dim_x = 10
    targets = ("posterior", "conditionals")
    mean = np.zeros(20)
    cov = np.block([[0.1 * np.eye(10), 0.1 * np.eye(10)], [0.1 * np.eye(10), 0.2 * np.eye(10)]])

    def condition_case(self, k) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(self.name, "mask", k)
        mask = split_mask(rng, self.dim_theta, self.dim_x)
        joint = self.mean + np.linalg.cholesky(self.cov) @ rng.standard_normal(20)
        return mask, joint[mask]

    def sample_prior(self, n, rng):
        return math.sqrt(0.1) * rng.standard_normal((n, 10))

    def simulator(self, theta, rng):
        return theta + math.sqrt(0.1) * rng.standard_normal(theta.shape)

    def prior_torch(self, device="cpu"):
        return torch.distributions.MultivariateNormal(
            torch.zeros(10, device=device), 0.1 * torch.eye(10, device=device)
        )

    def exact_log_prob(self, k, theta):
        # posterior N(x_o / 2, 0.05 I)
        from scipy.stats import norm

        mu = 0.5 * self.observation(k)
        return norm.logpdf(theta, loc=mu, scale=math.sqrt(0.05)).sum(-1)


class TwoMoons(SbibmTask):
    name = "two_moons"
    dim_theta = 2
    dim_x = 2

    def sample_prior(self, n, rng):
        return rng.uniform(-1, 1, size=(n, 2))

    def simulator(self, theta, rng):
        n = theta.shape[0]
        a = rng.uniform(-math.pi / 2, math.pi / 2, size=n)
        r = 0.1 + 0.01 * rng.standard_normal(n)
        p = np.stack([np.cos(a) * r + 0.25, np.sin(a) * r], axis=1)
        ang = -math.pi / 4
        c, s = math.cos(ang), math.sin(ang)
        z0 = c * theta[:, 0] - s * theta[:, 1]
        z1 = s * theta[:, 0] + c * theta[:, 1]
        return p + np.stack([-np.abs(z0), z1], axis=1)

    def prior_torch(self, device="cpu"):
        return _box(-1, 1, 2, device)


class GaussianMixture(SbibmTask):
    """theta ~ U(-10, 10)^2, x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)."""

    name = "gaussian_mixture"
    dim_theta = 2
    dim_x = 2

    def sample_prior(self, n, rng):
        return rng.uniform(-10, 10, size=(n, 2))

    def simulator(self, theta, rng):
        scale = np.where(rng.random(theta.shape[0]) < 0.5, 1.0, 0.1)[:, None]
        return theta + scale * rng.standard_normal(theta.shape)

    def prior_torch(self, device="cpu"):
        return _box(-10, 10, 2, device)


class SLCP(SbibmTask):
    """theta ~ U(-3, 3)^5; x = 4 iid 2-D Gaussian draws with mean theta[0:2], scales
    theta[2]^2, theta[3]^2 and correlation tanh(theta[4]), flattened to 8 columns."""

    name = "slcp"
    dim_theta = 5
    dim_x = 8
    # the Simformer paper's graph: the four 2-D draws depend on all parameters and, given them,
    # are iid (each draw's two columns are correlated: one variable)
    STRUCTURE = dict(variables=[5, 2, 2, 2, 2], parents={1: [0], 2: [0], 3: [0], 4: [0]},
                     exchangeable=[[1, 2, 3, 4]], latent=[0], observed=[1, 2, 3, 4])

    def sample_prior(self, n, rng):
        return rng.uniform(-3, 3, size=(n, 5))

    def simulator(self, theta, rng):
        n = theta.shape[0]
        s1, s2 = theta[:, 2] ** 2, theta[:, 3] ** 2
        rho = np.tanh(theta[:, 4])
        eps = 1e-6
        c11, c22, c12 = s1**2 + eps, s2**2 + eps, rho * s1 * s2
        l11 = np.sqrt(c11)
        l21 = c12 / l11
        l22 = np.sqrt(np.maximum(c22 - l21**2, 0.0))
        e = rng.standard_normal((n, 4, 2))
        x0 = theta[:, None, 0] + l11[:, None] * e[..., 0]
        x1 = theta[:, None, 1] + l21[:, None] * e[..., 0] + l22[:, None] * e[..., 1]
        return np.stack([x0, x1], axis=2).reshape(n, 8)

    def prior_torch(self, device="cpu"):
        return _box(-3, 3, 5, device)


class BernoulliGLM(SbibmTask):
    """A GLM with Bernoulli spikes: 10 parameters (offset and a smooth 9-tap filter, Gaussian
    smoothness prior), 100 time steps of white-noise stimulus (sbibm's design matrix), summary
    statistics: spike count and the 9-tap spike-triggered average."""

    name = "bernoulli_glm"
    dim_theta = 10
    dim_x = 10

    @cached_property
    def _precision(self) -> np.ndarray:
        M = 9
        D = np.eye(M) - np.diag(np.ones(M - 1), -1)
        F = D @ D + np.diag(np.arange(M) / M) ** 0.5
        B = np.zeros((M + 1, M + 1))
        B[0, 0] = 0.5
        B[1:, 1:] = F.T @ F
        return B

    @cached_property
    def _design(self):
        files = sbibm_files(self.name)
        design = torch.load(files / "design_matrix.pt").to(torch.float64)
        stimulus = torch.load(files / "stimulus_I.pt").to(torch.float64)
        return design, stimulus

    def sample_prior(self, n, rng):
        cov = np.linalg.inv(self._precision)
        return rng.standard_normal((n, 10)) @ np.linalg.cholesky(cov).T

    def simulator(self, theta, rng):
        design, stimulus = self._design
        out = []
        for i in range(0, theta.shape[0], 10_000):
            th = torch.as_tensor(theta[i : i + 10_000], dtype=torch.float64)
            z = torch.sigmoid(th @ design.T)
            u = torch.as_tensor(rng.random(z.shape))
            y = (u < z).to(torch.float64)
            sta = torch.nn.functional.conv1d(y[:, None, :], stimulus.reshape(1, 1, -1),
                                             padding=8)[:, 0, -9:]
            out.append(torch.cat([y.sum(1, keepdim=True), sta], dim=1).numpy())
        return np.concatenate(out)

    def prior_torch(self, device="cpu"):
        return torch.distributions.MultivariateNormal(
            torch.zeros(10, device=device),
            precision_matrix=torch.as_tensor(self._precision, dtype=torch.float32,
                                             device=device),
        )


# --------------------------------------------------------------------------- Gaussian DAG
class GaussianDAG(ExactGaussianTask, Task):
    """Linear-Gaussian DAG over 12 scalar variables, z_i = b_i + sum_j w_ij z_j + s_i eps_i.

    Parents (topological order): 0: -, 1: -, 2: 0, 3: 0 1, 4: 2, 5: 2 3, 6: 1 3, 7: 4,
    8: 4 5, 9: 5 6, 10: 0 6, 11: 7 8 9. Weights (+-[0.5, 1.2]), biases and noise scales are
    drawn once from a fixed seed. The joint is N(mu, Sigma) with mu = A b, Sigma = A S^2 A^T,
    A = (I - W)^-1, so every conditional is Gaussian and sampled exactly.
    """

    name = "gaussian_dag"
    dim_theta = 4
    dim_x = 8
    targets = ("posterior", "conditionals")
    n_observations = None
    PARENTS = {0: [], 1: [], 2: [0], 3: [0, 1], 4: [2], 5: [2, 3], 6: [1, 3], 7: [4],
               8: [4, 5], 9: [5, 6], 10: [0, 6], 11: [7, 8, 9]}

    @property
    def STRUCTURE(self) -> dict:  # noqa: N802 - the class attribute of the other tasks
        return dict(variables=None, parents=self.PARENTS, exchangeable=[],
                    latent=self.latent, observed=self.observed)

    def __init__(self, weight_seed: int = 2024):
        rng = np.random.default_rng(weight_seed)
        d = len(self.PARENTS)
        W = np.zeros((d, d))
        for i, pa in self.PARENTS.items():
            for j in pa:
                W[i, j] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
        self.W = W
        self.bias = rng.uniform(-1.0, 1.0, size=d)
        self.noise = rng.uniform(0.3, 1.0, size=d)
        A = np.linalg.inv(np.eye(d) - W)
        self.mean = A @ self.bias
        self.cov = A @ np.diag(self.noise**2) @ A.T

    @property
    def dim(self) -> int:
        return len(self.PARENTS)

    def sample_joint(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Ancestral sampling through the DAG (not via mu / Sigma, so the two are checked
        against each other by the tests)."""
        z = np.zeros((n, self.dim))
        eps = rng.standard_normal((n, self.dim))
        for i in range(self.dim):  # topological order
            z[:, i] = self.bias[i] + z @ self.W[i] + self.noise[i] * eps[:, i]
        return z

    def simulate(self, n, seed):
        z = self.sample_joint(n, _rng(self.name, "simulate", seed, n))
        return z[:, : self.dim_theta], z[:, self.dim_theta :]

    def prior_torch(self, device="cpu"):
        L = slice(0, self.dim_theta)
        return torch.distributions.MultivariateNormal(
            torch.as_tensor(self.mean[L], dtype=torch.float32, device=device),
            torch.as_tensor(self.cov[L, L], dtype=torch.float32, device=device),
        )

    # --- observations
    def _joint_o(self, k):
        self.check_observation(k)
        return self.sample_joint(1, _rng(self.name, "observation", k))[0]

    def condition_case(self, k) -> tuple[np.ndarray, np.ndarray]:
        """Observation k of the all-conditionals target: a random condition mask (each
        variable observed with probability 1/2, at least one observed and one latent) and the
        observed values from a joint draw."""
        rng = _rng(self.name, "mask", k)
        while True:
            mask = rng.random(self.dim) < 0.5
            if 0 < mask.sum() < self.dim:
                break
        return mask, self._joint_o(k)[mask]


class GaussianTree(GaussianDAG):
    """Linear-Gaussian binary tree over 24 scalar variables: variable i > 0 has the one parent
    (i - 1) // 2. The 8 upper variables (the root and its first three generations) are theta,
    the 16 below them x: inference from the leaves up through the tree, where the structure
    (each variable depends on one other) should matter. Weights, biases and noise scales are
    drawn once from a fixed seed, as for gaussian_dag."""

    name = "gaussian_tree"
    dim_theta = 8
    dim_x = 16
    PARENTS = {i: ([] if i == 0 else [(i - 1) // 2]) for i in range(24)}


# --------------------------------------------------------------------------- a wide task
class GaussianCurve(ExactGaussianTask, Task):
    """8 parameters and a curve read at 96 points (104 columns): theta ~ N(0, I_8), x(t_j) =
    sum_i theta_i phi_i(t_j) + 0.3 eps_j with Gaussian bumps phi_i (centres i / 7, width 0.1)
    at 96 points t_j evenly on [0, 1]: a linear-Gaussian model, so the posterior and every
    conditional are exact. Two variables (theta, x). Observation k: a joint draw seeded by k;
    its conditionals target observes 4 random parameters and 48 random readings."""

    name = "gaussian_curve"
    dim_theta = 8
    dim_x = 96
    variables = [8, 96]
    targets = ("posterior", "conditionals")
    n_observations = None
    NOISE = 0.3

    def __init__(self):
        t = np.linspace(0.0, 1.0, self.dim_x)
        centres = np.arange(self.dim_theta) / (self.dim_theta - 1)
        self.design = np.exp(-0.5 * ((t[:, None] - centres[None, :]) / 0.1) ** 2)  # (96, 8)
        A = np.vstack([np.eye(self.dim_theta), self.design])  # joint = A theta + noise
        noise = np.concatenate([np.zeros(self.dim_theta), np.full(self.dim_x, self.NOISE**2)])
        self.mean = np.zeros(self.dim_theta + self.dim_x)
        self.cov = A @ A.T + np.diag(noise)

    def _draw(self, n, rng):
        theta = rng.standard_normal((n, self.dim_theta))
        return theta, theta @ self.design.T + self.NOISE * rng.standard_normal((n, self.dim_x))

    def simulate(self, n, seed):
        return self._draw(n, _rng(self.name, "simulate", seed, n))

    def prior_torch(self, device="cpu"):
        return torch.distributions.MultivariateNormal(
            torch.zeros(self.dim_theta, device=device), torch.eye(self.dim_theta, device=device))

    def _joint_o(self, k):
        self.check_observation(k)
        theta, x = self._draw(1, _rng(self.name, "observation", k))
        return np.concatenate([theta[0], x[0]])

    def condition_case(self, k) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(self.name, "mask", k)
        mask = split_mask(rng, self.dim_theta, self.dim_x, self.dim_theta // 2, self.dim_x // 2)
        return mask, self._joint_o(k)[mask]


TASKS: dict[str, type[Task]] = {
    "seed": SeedTask,
    "gaussian_linear": GaussianLinear,
    "two_moons": TwoMoons,
    "gaussian_mixture": GaussianMixture,
    "slcp": SLCP,
    "bernoulli_glm": BernoulliGLM,
    "gaussian_dag": GaussianDAG,
    "gaussian_tree": GaussianTree,
    "gaussian_curve": GaussianCurve,
}


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError listing the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}.")
    return TASKS[name]()
