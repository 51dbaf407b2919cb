"""Every docstring example in the package runs and prints what it says (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import skformer

MODULES = sorted(m.name for m in pkgutil.walk_packages(skformer.__path__, "skformer."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_there():
    finder = doctest.DocTestFinder()
    counts = {name: sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
              for name in MODULES}
    for name in ("skformer.estimator", "skformer.graph", "skformer.diagnostics",
                 "skformer.simulation"):
        assert counts[name] > 0, name
