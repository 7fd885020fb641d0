"""The SDK can be driven from ``help()``: every public class, method and property of
``sealserve.client`` says what it does."""

from __future__ import annotations

import inspect

import sealserve.client


def _undocumented() -> list[str]:
    missing = []
    for name in sealserve.client.__all__:
        obj = getattr(sealserve.client, name)
        if not getattr(obj, "__module__", "").startswith("sealserve.client"):
            continue  # re-exported from another package, documented there
        if not (inspect.isclass(obj) or callable(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("sealserve"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, property | classmethod | staticmethod) or callable(value):
                    target = value.fget if isinstance(value, property) else value
                    if not getattr(target, "__doc__", None):
                        missing.append(f"{name}.{attr}")
    return sorted(set(missing))


def test_every_public_class_method_and_property_has_a_docstring() -> None:
    assert _undocumented() == []
