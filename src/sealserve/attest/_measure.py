"""Measurements: the MRENCLAVE analogue of the simulated TEE.

A measurement is SHA-256 over the canonical encoding of::

    {"label": "sealserve/measurement", "version": 1, "entry": "runtime",
     "module": "sealserve.runtime._main", "boot": <the bootstrap command>,
     "manifest": <sha256sum-style lines of every .py file of the package>,
     "config": canonical_encode(launch config)}

The manifest lists ``<sha256 hex>  sealserve/<relative path>`` for every ``.py`` file, sorted by
path, so the same code gives the same measurement on every machine: no timestamps, no absolute
paths, no interpreter version.  (``sha256sum`` on the files reproduces the manifest.)

:class:`CodeSnapshot` copies the package into a private directory and measures exactly the
bytes it copied; the platform runs launched programs from that copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from sealserve.attest._entries import entry_module
from sealserve.crypto import canonical_encode

__all__ = [
    "BOOT_COMMAND",
    "CodeSnapshot",
    "installed_package_dir",
    "measure",
    "measure_manifest",
    "package_sources",
    "source_manifest",
]

_PACKAGE: Final = "sealserve"
_VERSION: Final = 1
#: What ``python -I -B -c`` runs in a launched process: put the snapshot first on sys.path
#: and hand over to the (measured) bootstrap module inside it.
BOOT_COMMAND: Final = (
    "import sys;sys.path.insert(0,sys.argv[1]);from sealserve.attest._boot import main;main()"
)


def installed_package_dir() -> Path:
    """The directory of the sealserve package this interpreter imports."""
    import sealserve

    return Path(sealserve.__file__).resolve().parent


def package_sources(package_dir: Path) -> list[tuple[str, bytes]]:
    """Every ``.py`` file under ``package_dir`` as (``sealserve/<relative path>``, bytes),
    sorted by path; ``__pycache__`` and hidden directories are skipped, symlinks refused."""
    out: list[tuple[str, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                raise ValueError(f"refusing to measure a symlink: {path}")
            rel = path.relative_to(package_dir).as_posix()
            out.append((f"{_PACKAGE}/{rel}", path.read_bytes()))
    out.sort(key=lambda item: item[0])
    return out


def source_manifest(sources: list[tuple[str, bytes]]) -> bytes:
    """``sha256sum``-style lines (``<hex>  <path>``) for ``sources``, in order."""
    lines = [f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sources]
    return "".join(lines).encode("utf-8")


def measure_manifest(manifest: bytes, *, entry: str, config: Mapping[str, str]) -> str:
    """The hex measurement of code with this manifest, launched as ``entry`` with ``config``."""
    module = entry_module(entry)
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"config must map str to str; got {key!r}: {value!r}")
    encoded = canonical_encode(
        {
            "label": "sealserve/measurement",
            "version": _VERSION,
            "entry": entry,
            "module": module,
            "boot": BOOT_COMMAND,
            "manifest": manifest,
            "config": canonical_encode(config),
        }
    )
    return hashlib.sha256(encoded).hexdigest()


def measure(entry: str, *, config: Mapping[str, str] | None = None) -> str:
    """The measurement of the installed sealserve code launched as ``entry`` (hex).

    Exactly what a :class:`~sealserve.attest.tee.SimulatedPlatform` reports for a process it
    launched from a snapshot of this same code, with this same ``config``.
    """
    manifest = source_manifest(package_sources(installed_package_dir()))
    return measure_manifest(manifest, entry=entry, config=config or {})


class CodeSnapshot:
    """A private, read-only copy of the package, and the manifest of exactly what was copied."""

    def __init__(self, root: Path, manifest: bytes, files: int) -> None:
        self._root = root
        self._manifest = manifest
        self._files = files

    @classmethod
    def create(cls, package_dir: Path, *, parent: Path) -> CodeSnapshot:
        """Copy every ``.py`` file of ``package_dir`` into a new private directory in
        ``parent``; each file is read once, and the bytes hashed are the bytes written."""
        sources = package_sources(package_dir)
        if not any(path == f"{_PACKAGE}/__init__.py" for path, _ in sources):
            raise ValueError(f"{package_dir} is not the sealserve package (no __init__.py)")
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="snapshot-", dir=parent))
        try:
            for rel, data in sources:
                target = root / rel
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(0o400)
            for dirpath, _, _ in os.walk(root, topdown=False):
                Path(dirpath).chmod(0o500)
        except BaseException:
            _remove_tree(root)
            raise
        return cls(root, source_manifest(sources), len(sources))

    @property
    def root(self) -> Path:
        """The directory that holds ``sealserve/``: first on a launched process's sys.path."""
        return self._root

    @property
    def manifest(self) -> bytes:
        return self._manifest

    @property
    def file_count(self) -> int:
        return self._files

    def measurement(self, entry: str, *, config: Mapping[str, str] | None = None) -> str:
        """The measurement of this snapshot launched as ``entry`` with ``config``."""
        return measure_manifest(self._manifest, entry=entry, config=config or {})

    def remove(self) -> None:
        """Delete the snapshot (idempotent)."""
        _remove_tree(self._root)

    def __repr__(self) -> str:
        return f"CodeSnapshot(root={str(self._root)!r}, files={self._files})"


def _remove_tree(root: Path) -> None:
    if not root.exists():
        return
    for dirpath, _, _ in os.walk(root):
        Path(dirpath).chmod(stat.S_IRWXU)
    shutil.rmtree(root, ignore_errors=True)
