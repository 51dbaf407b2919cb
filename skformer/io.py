"""``save`` and ``load``: a fitted estimator to a pickle-free file and back.

The estimator hands over a plain description and its weights
(``SimformerEstimator._describe``); :mod:`skformer.persistence.codec` turns the parameters and
fitted attributes into JSON; :mod:`skformer.persistence.container` writes them with the
weights. Loading runs the same steps backwards and rebuilds the estimator through its own
parameter validation. Nothing in a file is ever executed.
"""

from __future__ import annotations

import os
from typing import Any

from sklearn.utils.validation import check_is_fitted

from skformer._legacy import file_to_description
from skformer.estimator import SimformerEstimator
from skformer.persistence import codec, container

__all__ = ["save", "load"]


def save(estimator: SimformerEstimator, path: str | os.PathLike[str]) -> None:
    """Save a fitted estimator to ``path`` in skformer's pickle-free format.

    The file holds the parameters, the fitted metadata and the model's weights and
    standardisation; no code, no training data and no optimiser state. It is written to a
    temporary file first and renamed into place, so a failed save leaves ``path`` as it was.

    Parameters
    ----------
    estimator : SimformerEstimator
        A fitted estimator.
    path : str or os.PathLike
        Where to write (conventionally ``*.skf``); an existing file is replaced.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When the estimator is not fitted.
    ValueError
        When a parameter or attribute cannot be stored without pickle (a callable
        ``condition_masks`` or ``edge_masks``, say), or ``path`` is a directory.

    See Also
    --------
    load : read the file back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skformer import SimformerEstimator, load, save
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2))
    >>> est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, max_epochs=2,
    ...                          device="cpu", random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(est, os.path.join(tmp, "model.skf"))
    ...     loaded = load(os.path.join(tmp, "model.skf"))
    >>> bool(np.array_equal(loaded.sample(3, random_state=0), est.sample(3, random_state=0)))
    True
    """
    if not isinstance(estimator, SimformerEstimator):
        raise TypeError(f"save() stores a SimformerEstimator; got {type(estimator).__name__}.")
    check_is_fitted(estimator, "model_")
    path = container.check_path(path)
    try:  # what save writes, load restores: parameters set after the fit are checked here
        estimator._check_loadable()
    except ValueError as err:
        raise ValueError(f"save() refuses to write {os.fspath(path)!r}: load would refuse the "
                         f"estimator ({err}); set the parameters back or refit.") from err
    description, tensors = estimator._describe()
    header = {
        "format": "skformer",
        "estimator": description["estimator"],
        "skformer_version": description["skformer_version"],
        "params": {k: codec.encode(v, f"parameter {k!r}")
                   for k, v in description["params"].items()},
        "fitted": {k: codec.encode(v, f"fitted attribute {k!r}")
                   for k, v in description["fitted"].items()},
        "model": description["model"],
    }
    container.write(path, header, tensors)


def load(path: str | os.PathLike[str]) -> SimformerEstimator:
    """Load an estimator written by :func:`save`, without pickle.

    The file is checked before anything is built: magic bytes, format version, SHA-256
    checksum, JSON header (within nesting and integer limits), tensor dtypes (float32,
    float64, int64, bool) and shapes, then the parameters through the estimator's own
    validation and the weights against the architecture they claim. Nothing in the file is
    executed. The model goes to ``resolve_device(device)`` of the saved parameters: ``"auto"``
    picks a GPU when present, and a CUDA device that is not available falls back to the CPU
    with a ``RuntimeWarning``. Files of format version 1 (skformer 0.1) still load.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    SimformerEstimator
        The fitted estimator, in eval mode.

    Raises
    ------
    ValueError
        Naming the file and the reason: not a regular file, not a skformer file, a newer
        format version, corrupt or truncated, or holding values outside what :func:`save`
        writes; also for a directory path.

    Warns
    -----
    SkformerVersionWarning
        When the file was written by another skformer version.

    See Also
    --------
    save : write such a file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skformer import SimformerEstimator, load, save
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, max_epochs=2,
    ...                          device="cpu", random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(est, os.path.join(tmp, "model.skf"))
    ...     loaded = load(os.path.join(tmp, "model.skf"))
    >>> loaded.condition([True, False, False]).sample(4, observed=[0.5]).shape
    (4, 2)
    """
    path = container.check_path(path)
    version, header, tensors = container.read(path)
    try:
        description = _description(version, header)
        if version == 1:
            description, tensors = file_to_description(description, tensors)
        return SimformerEstimator._from_description(description, tensors)
    except ValueError as err:
        raise ValueError(f"{path!r}: {err}") from None


def _description(version: int, header: dict[str, Any]) -> dict[str, Any]:
    """The estimator description a header holds, values decoded."""
    params, fitted = header.get("params"), header.get("fitted")
    if not isinstance(params, dict) or not isinstance(fitted, dict):
        raise ValueError("'params' and 'fitted' must be objects.")
    description = {k: v for k, v in header.items() if k not in ("params", "fitted", "format")}
    description["params"] = {k: codec.decode(v, f"parameter {k!r}") for k, v in params.items()}
    description["fitted"] = {k: codec.decode(v, f"fitted attribute {k!r}")
                             for k, v in fitted.items()}
    return description
