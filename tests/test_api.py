"""The public API: ``anns.__all__`` is exactly what the package exports, each documented."""

from __future__ import annotations

import importlib.metadata
import inspect
import types

import anns
import anns.errors


def _public_names() -> set[str]:
    for name in anns.__all__:
        getattr(anns, name)  # lazy exports (module __getattr__) resolve and are cached
    return {
        name
        for name, value in vars(anns).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_matches_the_exported_names() -> None:
    assert len(anns.__all__) == len(set(anns.__all__)), "a name is listed twice"
    assert set(anns.__all__) == _public_names() | {"__version__"}


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from anns import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(anns.__all__)


def test_every_error_class_is_exported() -> None:
    errors = {
        name
        for name, value in vars(anns.errors).items()
        if inspect.isclass(value) and issubclass(value, anns.AnnsError)
    }
    assert errors <= set(anns.__all__)


def test_every_export_is_documented() -> None:
    undocumented = [
        name
        for name in anns.__all__
        if (inspect.isclass(getattr(anns, name)) or inspect.isfunction(getattr(anns, name)))
        and not inspect.getdoc(getattr(anns, name))
    ]
    assert not undocumented
    assert inspect.getdoc(anns)


def test_version_matches_the_distribution() -> None:
    assert anns.__version__ == importlib.metadata.version("anns")
