"""Every package re-exports a sorted ``__all__`` that names exactly its public members."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import sealserve


def _public_modules() -> list[str]:
    names = ["sealserve"]
    for info in pkgutil.walk_packages(sealserve.__path__, prefix="sealserve."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        if info.name in ("sealserve.cli", "sealserve.__main__"):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names missing {member!r}"
    public = {
        k
        for k, v in vars(module).items()
        if not k.startswith("_")
        and not isinstance(v, types.ModuleType)
        and (
            getattr(v, "__module__", "") == name
            or getattr(v, "__module__", "").startswith(name + ".")
        )
        and k not in ("annotations",)
    }
    assert public <= set(exported) | {"TYPE_CHECKING"}, (
        f"{name} defines public names missing from __all__: {sorted(public - set(exported))}"
    )
