"""The package version, and the warning for models saved by another version.

Imported by whoever stamps or checks a version (pickling, the file format), so that no module
needs to import the package itself to read it.
"""

from __future__ import annotations

from skformer._utils import warn

__all__ = ["__version__", "SkformerVersionWarning", "check_version"]

__version__ = "0.2.0"


class SkformerVersionWarning(UserWarning):
    """A model saved by one skformer version is loaded by another.

    Like scikit-learn's ``InconsistentVersionWarning``: the model may still work, but nothing
    guarantees it.

    Parameters
    ----------
    estimator_name : str
        Class name of the loaded estimator.
    current_version : str
        The running skformer version.
    original_version : str
        The version that saved the model (``"unknown"`` when the file does not say).
    """

    def __init__(self, *, estimator_name: str, current_version: str, original_version: str):
        super().__init__(estimator_name, current_version, original_version)
        self.estimator_name = estimator_name
        self.current_version = current_version
        self.original_version = original_version

    def __str__(self) -> str:
        return (
            f"Loading {self.estimator_name} saved with skformer {self.original_version} while "
            f"running skformer {self.current_version}. This might fail or give different "
            "results; refit or save it again with this version to be sure."
        )


def check_version(original, estimator_name: str) -> None:
    """Warn with :class:`SkformerVersionWarning` when ``original`` is not the running version."""
    if original != __version__:
        warning = SkformerVersionWarning(
            estimator_name=estimator_name,
            current_version=__version__,
            original_version="unknown" if original is None else str(original),
        )
        warn(warning, SkformerVersionWarning)
