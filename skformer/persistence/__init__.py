"""The pickle-free file format, in two layers that know nothing of the estimator.

:mod:`~skformer.persistence.codec` turns Python values into JSON and back within limits of its
own; :mod:`~skformer.persistence.container` writes and checks the binary file (magic bytes,
format version, JSON header, raw tensors, SHA-256). :mod:`skformer.io` joins them to the
estimator's plain description (``SimformerEstimator._describe``).
"""

from skformer.persistence import codec, container
from skformer.persistence.container import FORMAT_VERSION, MAGIC

__all__ = ["codec", "container", "FORMAT_VERSION", "MAGIC"]
