"""Device choice, seeding and array conversion: each decided here and nowhere else."""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = [
    "resolve_device",
    "make_generator",
    "seed_from",
    "as_float_tensor",
    "to_numpy",
    "DTYPE",
]

DTYPE = torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device spec ("auto", "cpu", "cuda", "cuda:1", "gpu", torch.device) into a device.

    "auto" (or None) picks the first GPU when one is present. "gpu" means "cuda". A CUDA device
    that is not available falls back to the CPU with a warning, so a model trained on a GPU can
    be loaded and used anywhere.
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
    if dev.type == "cuda":
        index = dev.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            warnings.warn(
                f"device {str(dev)!r} is not available on this machine; using the CPU instead.",
                RuntimeWarning,
                stacklevel=3,
            )
            return torch.device("cpu")
    return dev


def seed_from(random_state) -> int:
    """Draw a 63-bit seed from anything scikit-learn accepts as ``random_state``.

    None draws fresh entropy; an int is used as is; a ``numpy.random.RandomState`` or
    ``numpy.random.Generator`` is advanced by one draw.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ValueError(
        "random_state must be None, an int, a numpy RandomState or a numpy Generator, "
        f"got {type(random_state).__name__}."
    )


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (the global RNG is not touched)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def as_float_tensor(values, device: torch.device) -> torch.Tensor:
    """numpy / torch / pandas / nested lists -> float32 tensor on ``device`` (a copy)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device=device, dtype=DTYPE).clone()
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    # a fresh, contiguous, writeable copy: negative strides and read-only memmaps are fine
    arr = np.array(values, dtype=np.float64, order="C", copy=True)
    return torch.as_tensor(arr, dtype=DTYPE, device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float tensor on any device -> float64 numpy array."""
    return t.detach().to("cpu", torch.float64).numpy()
