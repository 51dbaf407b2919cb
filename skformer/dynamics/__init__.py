"""Generative dynamics: how noise turns into samples, and the losses that teach the network.

:class:`~skformer.dynamics.base.Dynamics` states the contract (preconditioning, training noise
levels, regression target, sampling grid, noise prior); :class:`ScoreDynamics` and
:class:`FlowDynamics` fulfil it. :data:`DYNAMICS` is the one registry of their names, which are
the estimator's ``method`` values.
"""

from __future__ import annotations

from typing import Any

from skformer.dynamics.base import Dynamics
from skformer.dynamics.flow import FlowDynamics
from skformer.dynamics.score import ScoreDynamics

__all__ = ["Dynamics", "ScoreDynamics", "FlowDynamics", "DYNAMICS", "METHODS", "make_dynamics"]

DYNAMICS: dict[str, type[Dynamics]] = {cls.name: cls for cls in (ScoreDynamics, FlowDynamics)}
"""Dynamics classes by name."""

METHODS = tuple(DYNAMICS)


def make_dynamics(method: str, config: dict[str, Any] | None = None) -> Dynamics:
    """The dynamics named ``method`` built from ``config`` (its constructor arguments).

    Raises ValueError for an unknown name or arguments the class does not take.
    """
    cls = DYNAMICS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    config = dict(config or {})
    if not all(isinstance(k, str) for k in config):
        raise ValueError(f"dynamics arguments must have string keys; got {list(config)}.")
    try:
        return cls(**config)
    except TypeError as err:
        raise ValueError(f"{cls.__name__} does not take the arguments {config}: {err}") from err
