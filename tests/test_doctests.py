"""The examples in the library's docstrings run and show what they say (``# doctest: +SKIP``
marks those that need data, a model or a network)."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import nucleistyle


def test_every_docstring_example_in_the_package_runs() -> None:
    names = [m.name for m in pkgutil.walk_packages(nucleistyle.__path__, "nucleistyle.")]
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in ["nucleistyle", *sorted(names)]:
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            runner.run(test, out=out.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, out.getvalue()
    assert results.attempted >= 30  # the examples are found (most modules have some)
