"""Only the vector generator may reach the fixed-nonce hook (docs/protocol.md, "Test
vectors"): a chosen AES-GCM nonce anywhere else in sealserve would be a bug waiting."""

from __future__ import annotations

import ast
from pathlib import Path

import sealserve

SRC = Path(sealserve.__file__).resolve().parent
ALLOWED = {"protocol/_vectors.py", "crypto/_fixed_nonce.py"}


def importers_of_the_hook() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.endswith("._fixed_nonce") else []
            if any(name.endswith("_fixed_nonce") for name in names):
                found.add(path.relative_to(SRC).as_posix())
    return found


def test_only_the_vector_generator_imports_the_fixed_nonce_hook() -> None:
    assert importers_of_the_hook() == {"protocol/_vectors.py"}


def test_the_hook_is_not_exported() -> None:
    import sealserve.crypto
    import sealserve.protocol

    for package in (sealserve.crypto, sealserve.protocol):
        assert not [n for n in package.__all__ if "fixed_nonce" in n or "test_vector" in n]
