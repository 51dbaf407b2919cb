"""skformer: the Simformer (all-in-one simulation-based inference) as a scikit-learn estimator."""

from skformer import diagnostics, sequential
from skformer._version import SkformerVersionWarning, __version__
from skformer.compat import BoxUniform, FlowMatchingSimformer, Simformer
from skformer.conditional import Conditional
from skformer.estimator import SimformerEstimator
from skformer.graph import DAG
from skformer.io import load, save
from skformer.layout import Layout
from skformer.model import SimformerModel, Standardiser
from skformer.plot import coverage_plot, pairplot, plot_loss, sbc_rank_plot, tarp_plot
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
    "sbc_rank_plot",
    "coverage_plot",
    "tarp_plot",
    "diagnostics",
    "sequential",
    "simulate",
    "save",
    "load",
    "SkformerVersionWarning",
    "__version__",
]
