"""Device choice, seeding and array conversion: each decided here and nowhere else.

Seeding
-------
Every random draw of skformer comes from a generator made by :func:`make_generator` from a seed,
and every seed comes from a ``random_state`` through one of two functions:

* :func:`fit_seeds` -- the seed tree of a fit. One ``random_state`` becomes a
  ``numpy.random.SeedSequence`` whose children seed, each on its own, the network's weights, the
  validation split, the order of training rows, the training masks, the training noise and the
  validation set's fixed masks and noise. Changing how one stream is used (more epochs, another
  validation fraction) leaves the others' draws as they were.
* :func:`seed_from` -- one seed for one call (``sample``, ``log_prob``, ``map``): the call's
  ``random_state``, never the estimator's.

The global torch and numpy random states are never used or changed.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = [
    "DTYPE",
    "MAX_STANDARD_UNITS",
    "resolve_device",
    "warn",
    "seed_from",
    "FitSeeds",
    "fit_seeds",
    "make_generator",
    "as_float_tensor",
    "to_numpy",
]

DTYPE = torch.float32
"""The dtype of the network and of everything it sees."""

MAX_THREADS = 1024
"""Most torch threads ``n_threads`` may ask for (OpenMP crashed the interpreter at 100,000)."""

MAX_STANDARD_UNITS = 1e12
"""Largest magnitude, in standard units, of an input the network is given (observed values,
latent values of a density, positions). Its layer norms square their inputs in float32, so
values beyond about 1e18 come out as NaN: inputs beyond this limit are refused instead (a
million times below, for the weights and sums in between; 1e12 standard deviations from the
training data is no answer anyway)."""


_HERE = os.path.dirname(os.path.abspath(__file__))
_SKLEARN = f"{os.sep}sklearn{os.sep}"


def warn(message: str | Warning, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the user's line: the first frame outside skformer and
    scikit-learn (a fit called through a Pipeline, GridSearchCV or the sbi facade included)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(_HERE)
                                 or _SKLEARN in frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device spec ("auto", "cpu", "cuda", "cuda:1", "gpu", torch.device) into a device.

    "auto" (or None) picks the first GPU when one is present. "gpu" means "cuda". A CUDA device
    that is not available falls back to the CPU with a warning, so a model trained on a GPU can
    be loaded and used anywhere. Other device types ("meta", "mps", ...) are refused: the model
    keeps float64 standardisation buffers and real weights, which only the CPU and CUDA hold.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str) and device.startswith("gpu"):
        device = "cuda" + device[3:]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}."
        ) from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}."
        )
    if dev.type == "cuda":
        index = dev.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            warn(f"device {str(dev)!r} is not available on this machine; using the CPU "
                 "instead.", RuntimeWarning)
            return torch.device("cpu")
    return dev


# ---------------------------------------------------------------------------------- threads
@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` torch threads (intra-op), then restore the count before.

    None leaves torch's setting alone: its default (the physical cores), ``OMP_NUM_THREADS``,
    a :func:`threadpoolctl.threadpool_limits` block, or the one thread that joblib's loky
    workers and dask's workers start with. The setting is global to the process.
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_THREADS:
        # checked here too: set_params after a fit skips fit's validation
        raise ValueError(f"n_threads must be None or an int in [1, {MAX_THREADS}]; got {n!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- seeding
def int_seed(sequence: np.random.SeedSequence) -> int:
    """A 63-bit int seed (what torch and numpy accept) drawn from a ``SeedSequence``."""
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_from(random_state) -> int:
    """Draw a 63-bit seed from anything scikit-learn accepts as ``random_state``.

    None draws fresh entropy; an int is used as is; a ``numpy.random.RandomState`` or
    ``numpy.random.Generator`` is advanced by one draw.
    """
    if random_state is None:
        return int_seed(np.random.SeedSequence())
    if isinstance(random_state, (int, np.integer)):
        if not 0 <= random_state < 2**63:
            raise ValueError(f"random_state must be an int in [0, 2**63) (as in scikit-learn, "
                             f"non-negative); got {random_state}.")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ValueError(
        "random_state must be None, an int, a numpy RandomState or a numpy Generator, "
        f"got {type(random_state).__name__}."
    )


@dataclass(frozen=True)
class FitSeeds:
    """The seeds of one fit, one per independent stream of randomness."""

    weights: int
    """Initial network weights."""
    split: int
    """Which rows are held out for validation."""
    shuffle: int
    """Order of the training rows in each epoch."""
    masks: int
    """Condition and edge masks of the training rows."""
    noise: int
    """Noise levels and noise of the training rows."""
    validation: int
    """Fixed masks, noise levels and noise of the validation rows."""


    def for_rank(self, group) -> FitSeeds:
        """The seeds of one rank of a data-parallel fit: its own masks, noise, order and
        validation draws; the weights and the split shared by all ranks."""
        return FitSeeds(self.weights, self.split, group.seed(self.shuffle),
                        group.seed(self.masks), group.seed(self.noise),
                        group.seed(self.validation))


def fit_seeds(random_state, continuation: int = 0) -> FitSeeds:
    """The seed tree of a fit: one seed per stream, all from ``random_state``.

    The same ``random_state`` (an int) gives the same seeds on every machine and device.
    ``continuation`` > 0 gives a fit that continues an earlier one (``warm_start``,
    ``partial_fit``) streams of its own, so that it does not replay the first fit's draws.
    """
    names = [f.name for f in fields(FitSeeds)]
    seed = seed_from(random_state)
    root = np.random.SeedSequence(seed if continuation == 0 else [seed, int(continuation)])
    seeds = [int_seed(child)
             for child in root.spawn(len(names))]
    return FitSeeds(**dict(zip(names, seeds, strict=True)))


def device_memory(device: torch.device) -> int | None:
    """The total memory of ``device`` in bytes (a GPU's, or the host's physical memory for the
    CPU), or None where the platform does not say."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(n_bytes: int, device: torch.device | str, what: str) -> None:
    """Refuse work that ``what`` (a sentence naming the argument) sets at ``n_bytes`` of
    memory when that is more than ``device`` has at all: a ValueError that says so, instead of
    the allocator's error."""
    device = torch.device(device)
    total = device_memory(device)
    if total is not None and n_bytes > total:
        raise ValueError(f"{what} would hold at least {n_bytes / 1e9:.3g} GB at once, more than "
                         f"the {total / 1e9:.3g} GB of this machine's {device.type} memory.")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (the global RNG is not touched)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


# ---------------------------------------------------------------------------------- arrays
def real_array(values, name: str) -> np.ndarray:
    """``values`` as a float64 numpy array: masked entries NaN; complex numbers (numpy would
    keep their real part with only a warning) and what is not numbers refused, naming
    ``name``."""
    if np.ma.isMaskedArray(values):
        values = np.ma.filled(values.astype(np.float64), np.nan)
    if np.iscomplexobj(values):
        raise ValueError(f"{name} holds complex numbers; skformer takes real ones.")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers; got {type(values).__name__}."
                         ) from err


def as_float_tensor(values, device: torch.device, dtype: torch.dtype = DTYPE,
                    name: str = "values") -> torch.Tensor:
    """numpy / torch / pandas / nested lists -> tensor of ``dtype`` on ``device`` (a copy).
    Complex values are refused (casting would drop their imaginary part silently)."""
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise ValueError(f"{name} holds complex numbers; skformer takes real ones.")
        return values.detach().to(device=device, dtype=dtype).clone()
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    # a fresh, contiguous, writeable copy: negative strides and read-only memmaps are fine
    arr = np.array(real_array(values, name), order="C", copy=True)
    return torch.as_tensor(arr, dtype=dtype, device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float tensor on any device -> float64 numpy array."""
    return t.detach().to("cpu", torch.float64).numpy()
