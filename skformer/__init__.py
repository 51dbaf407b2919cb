"""skformer: the Simformer (all-in-one simulation-based inference) as a scikit-learn estimator."""

from skformer._version import SkformerVersionWarning, __version__
from skformer.compat import BoxUniform, FlowMatchingSimformer, Simformer
from skformer.conditional import Conditional
from skformer.estimator import SimformerEstimator
from skformer.graph import DAG
from skformer.io import load, save
from skformer.layout import Layout
from skformer.model import SimformerModel, Standardiser
from skformer.plot import pairplot, plot_loss
from skformer.simulation import simulate

__all__ = [
    "SimformerEstimator",
    "Conditional",
    "Layout",
    "DAG",
    "SimformerModel",
    "Standardiser",
    "Simformer",
    "FlowMatchingSimformer",
    "BoxUniform",
    "pairplot",
    "plot_loss",
    "simulate",
    "save",
    "load",
    "SkformerVersionWarning",
    "__version__",
]
