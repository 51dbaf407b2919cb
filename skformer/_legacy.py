"""Models written by skformer 0.1 (file format 1, and its pickles) -> today's description.

skformer 0.1 kept the network, the dynamics and the standardisation as separate fitted
attributes (``network_``, ``dynamics_``, ``mean_`` / ``scale_``, ``layout_``) and called the
solver parameter ``sampler``. Here they become the description that
``SimformerEstimator._from_description`` reads; nothing else in the package knows the old
shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["file_to_description", "pickle_state_to_description"]

_V1_PARAMS = (
    "method", "sde", "variables", "condition_masks", "edge_masks", "posterior_latent",
    "posterior_observed", "d_model", "n_layers", "n_heads", "max_epochs", "batch_size",
    "learning_rate", "validation_fraction", "early_stopping", "n_iter_no_change", "tol",
    "sampling_steps", "sampler", "device", "random_state", "verbose",
)
_V1_DYNAMICS = {"ScoreDynamics": "score", "FlowDynamics": "flow"}


def _params(params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    if "sampler" in params:
        params["solver"] = params.pop("sampler")
    return params


def _model(layout, dynamics, architecture, network_state, mean, scale
           ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not isinstance(dynamics, dict):
        raise ValueError(f"a skformer 0.1 dynamics must be a mapping; got {dynamics!r}.")
    method = dynamics.get("method") or _V1_DYNAMICS.get(dynamics.get("class"))
    if hasattr(layout, "to_dict"):
        layout = layout.to_dict()
    description = {"layout": layout,
                   "dynamics": {"method": method, "config": dynamics.get("kwargs")},
                   "network": architecture}
    try:
        standardiser = {"standardiser.mean": torch.as_tensor(np.asarray(mean, np.float64)),
                        "standardiser.scale": torch.as_tensor(np.asarray(scale, np.float64))}
    except (TypeError, ValueError) as err:
        raise ValueError(f"skformer 0.1 mean_ / scale_ must be float arrays ({err}).") from err
    tensors = {f"network.{k}": v for k, v in network_state.items()}
    n_columns = standardiser["standardiser.mean"].numel()
    return description, {**tensors, **standardiser,
                         "missing_seen": torch.zeros(n_columns, dtype=torch.bool)}


def _column_tokens(model: dict[str, Any]) -> list[list[int]]:
    """skformer 0.1 had one token per column."""
    network = model.get("network")
    n = network.get("n_tokens") if isinstance(network, dict) else None
    return [[c] for c in range(n)] if isinstance(n, int) and 0 < n < 10**6 else []


def file_to_description(description: dict[str, Any], tensors: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A format-1 header (values decoded) and its tensors -> description and tensors."""
    fitted = dict(description["fitted"])
    mean, scale = fitted.pop("mean_", None), fitted.pop("scale_", None)
    stray = sorted(k for k in tensors if not k.startswith("network."))
    if stray:
        raise ValueError(f"unexpected tensors {stray}.")
    model, model_tensors = _model(
        description.get("layout"), description.get("dynamics"), description.get("network"),
        {k[len("network."):]: v for k, v in tensors.items()}, mean, scale)
    fitted["token_columns_"] = _column_tokens(model)
    return {"estimator": description.get("estimator"),
            "skformer_version": description.get("skformer_version"),
            "params": _params(description["params"]), "fitted": fitted,
            "model": model}, model_tensors


def pickle_state_to_description(state: dict[str, Any]) -> dict[str, Any]:
    """The state a skformer 0.1 pickle holds -> ``{"description": ..., "tensors": ...}``."""
    state = dict(state)
    version = state.pop("_skformer_version", None)
    network = state.pop("network_", None)
    dynamics = state.pop("dynamics_", None)
    layout = state.pop("layout_", None)
    state.pop("device_", None)
    mean, scale = state.pop("mean_", None), state.pop("scale_", None)
    params = _params({k: state.pop(k) for k in _V1_PARAMS if k in state})
    description = {"estimator": "SimformerEstimator", "skformer_version": version,
                   "params": params, "fitted": state}
    if network is None:
        return {"description": description, "tensors": {}}
    if not isinstance(network, dict) or network.get("__skformer__") != "network":
        raise ValueError("this skformer 0.1 pickle holds a network in an unknown form.")
    model, tensors = _model(layout, dynamics, network.get("architecture"),
                            network.get("state_dict", {}), mean, scale)
    description["model"] = model
    state["token_columns_"] = _column_tokens(model)
    return {"description": description, "tensors": tensors}
