"""Names a package re-exports but imports on first use (PEP 562 module ``__getattr__``).

A package keeps its names in ``__all__`` and, for the type checker, under
``if TYPE_CHECKING:``; at run time it hands the lazy ones to :func:`exports`::

    __getattr__, __dir__ = _lazy.exports(__name__, globals(), {"Name": "_module"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(
    package: str, namespace: dict[str, Any], lazy: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose globals are ``namespace``:
    a name of ``lazy`` is imported from ``package.<lazy[name]>`` on first use and kept."""

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__
