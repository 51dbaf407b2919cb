"""The measuring stick: accuracy, speed and memory of skformer against sbi's baselines.

A benchmark harness, not part of the installed ``skformer`` package. Run it from the
``benchmarks`` directory (or with ``benchmarks`` on ``PYTHONPATH``)::

    cd benchmarks && python -m harness --quick
    python -m harness --tasks two_moons --budgets 1000 10000 --methods skformer_score npe

See ``benchmarks/README.md``. Modules: :mod:`harness.tasks` (task registry, simulators and
reference samples), :mod:`harness.methods` (the runners), :mod:`harness.run` (the CLI, the
resumable CSV) and :mod:`harness.report` (markdown table, plots, docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
ROOT = BENCHMARKS.parent
# metrics.py and seed_task.py live next to this package as top-level modules
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


class MissingDependency(ImportError):
    """An optional dependency (sbi, sbibm, ...) is not installed; the message says what to
    install. The harness records the affected rows as skipped instead of crashing."""


__all__ = ["BENCHMARKS", "ROOT", "MissingDependency"]
