"""Training state on disk, so that a fit that is cut off resumes where it stopped.

A fit whose process is killed (the end of a batch job's time, a closed laptop, a crash) or
stopped with Ctrl-C loses its training. With a checkpoint directory the training loop writes
its whole state there every so many seconds, at the end of an epoch: the weights, their moving
average, the optimiser's moments, the step count, the best epoch so far, the history, and every
random stream (order of rows, noise, masks). The same fit started again (same data, same
settings, same seed) finds the file and goes on from that epoch, and ends with the weights the
uninterrupted fit would have had. A finished fit removes its file.

Each fit has its own file, named by a fingerprint of everything that makes it that fit: so one
directory serves many fits (a grid search, a benchmark), a changed setting or new data starts
afresh instead of resuming something else, and no fit overwrites another's state.

Knows torch and files; nothing of the estimator, numpy or scikit-learn.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["Checkpoint", "fingerprint"]

FORMAT = 1
"""Version of the file's contents; a file of another version is not resumed from."""


def fingerprint(*parts) -> str:
    """A hex digest of ``parts``: tensors (their dtype, shape and bytes), dicts of tensors
    (a state dict), None, and anything else by its ``repr``."""
    digest = hashlib.sha256()

    def feed(part) -> None:
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu").contiguous()
            digest.update(f"tensor {t.dtype} {tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, dict):
            for key in sorted(part, key=str):
                digest.update(f"key {key}".encode())
                feed(part[key])
        else:
            digest.update(f"value {part!r}".encode())

    for part in parts:
        feed(part)
    return digest.hexdigest()


class Checkpoint:
    """One fit's saved training state: ``directory / fit-<fingerprint>.pt``.

    Parameters
    ----------
    directory : str or path
        Where the file lives (created on the first save).
    key : str
        The fit's fingerprint (see :func:`fingerprint`).
    interval : float
        Seconds between saves: :meth:`due` says True when at least this long has passed since
        the last save (or since this object was made); 0 saves at every epoch.
    """

    def __init__(self, directory, key: str, interval: float):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"checkpoint_dir {str(directory)!r} is a file, not a directory.")
        self.key = key
        self.path = self.directory / f"fit-{key[:24]}.pt"
        self.interval = float(interval)
        self._last = time.monotonic()

    def load(self) -> dict | None:
        """The saved state, or None when this fit has no file. ValueError when the file
        cannot be read or belongs to another fit (a fingerprint that only shares the name's
        prefix): it is left in place, and the message says to remove it."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file: the same advice
            first = (str(err).strip().splitlines() or [""])[0][:100]
            raise ValueError(f"the checkpoint {self.path} cannot be read "
                             f"({type(err).__name__}: {first}); remove it to start this fit "
                             "afresh.") from err
        if not isinstance(state, dict) or state.get("fingerprint") != self.key:
            raise ValueError(f"the checkpoint {self.path} holds another fit's state; remove "
                             "it to start this fit afresh.")
        if state.get("format") != FORMAT:
            raise ValueError(f"the checkpoint {self.path} was written in format "
                             f"{state.get('format')!r}, not {FORMAT}; remove it to start this "
                             "fit afresh.")
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval

    def postpone(self) -> None:
        """Count the interval from now (after a failed save)."""
        self._last = time.monotonic()

    def save(self, state: dict) -> None:
        """Write ``state`` (with the fingerprint) atomically: a reader, or a process killed
        mid-write, sees the old file or the new one, never half of one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".fit-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save({**state, "fingerprint": self.key, "format": FORMAT}, fh)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._last = time.monotonic()

    def remove(self) -> None:
        """Delete the file (the fit is over)."""
        self.path.unlink(missing_ok=True)
