"""skformer: the Simformer (all-in-one simulation-based inference) as a scikit-learn estimator."""

__version__ = "0.1.0"

from skformer.compat import BoxUniform, FlowMatchingSimformer, Simformer
from skformer.conditional import Conditional
from skformer.estimator import SimformerEstimator
from skformer.layout import Layout
from skformer.persistence import SkformerVersionWarning, load, save
from skformer.plot import pairplot, plot_loss

__all__ = [
    "SimformerEstimator",
    "Conditional",
    "Layout",
    "Simformer",
    "FlowMatchingSimformer",
    "BoxUniform",
    "pairplot",
    "plot_loss",
    "save",
    "load",
    "SkformerVersionWarning",
    "__version__",
]
