"""Generative dynamics: how noise turns into samples, and the losses that teach the network.

A dynamics object wraps a :class:`~skformer.network.MaskedTransformer` with its preconditioning
and exposes, over full token vectors with a condition mask:

* ``loss(net, x0, observed, edges, gen)`` -- per-sample training loss on latent entries only;
* ``denoise(net, x, sigma, observed, edges)`` -- the model in variance-exploding form
  (``x = x0 + sigma * eps``), an estimate of x0; observed entries pass through;
* ``time_grid(steps, device)`` -- decreasing noise levels from pure noise to 0;
* ``prior_sample`` / ``prior_log_prob`` -- the noise distribution at the start of the grid.

The solvers in :mod:`skformer.dynamics.solvers` only see these methods.
"""

from skformer.dynamics.flow import FlowDynamics
from skformer.dynamics.score import ScoreDynamics

__all__ = ["ScoreDynamics", "FlowDynamics", "make_dynamics", "METHODS"]

METHODS = ("score", "flow")


def make_dynamics(method: str, sde: str = "ve"):
    """The dynamics for an estimator's ``method`` ("score" or "flow") and ``sde``."""
    if method == "score":
        return ScoreDynamics(sde=sde)
    if method == "flow":
        return FlowDynamics()
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
