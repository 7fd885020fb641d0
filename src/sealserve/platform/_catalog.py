"""The models the platform can serve: the sealed models of a model store, and their sizes.

The router packs models by the memory they take in a runtime's budget; the runtime charges a
model its size times ``memory_factor`` (docs/runtime.md), and a sealed model is its plaintext
plus a few bytes per chunk, so the catalog charges the sealed size times the same factor (a
slight over-estimate).  :meth:`ModelCatalog.get` reads a manifest afresh (an owner may have
uploaded a new version); the router's frequent size lookups use the last one read.  Nothing
here is secret.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from sealserve.errors import ModelNotStored
from sealserve.instance import ModelManifest, SealedModelStore
from sealserve.protocol import split_model_id

__all__ = ["ModelCatalog"]

_MIB = float(1 << 20)


class ModelCatalog:
    """The sealed models of ``store``, as the router and the gateway need them."""

    def __init__(self, store: SealedModelStore, *, memory_factor: float = 4.0) -> None:
        if not isinstance(store, SealedModelStore):
            raise TypeError(f"store must be a model store, got {type(store).__name__}")
        if not memory_factor >= 1.0 or math.isinf(memory_factor):
            raise ValueError(f"memory_factor must be a finite number >= 1, got {memory_factor!r}")
        self.store = store
        self.memory_factor = memory_factor
        self._lock = threading.Lock()
        self._cache: dict[str, ModelManifest] = {}
        self._stamps: dict[str, tuple[Any, ...]] = {}

    def get(self, model_id: str) -> ModelManifest:
        """The current manifest of ``model_id`` (the gateway asks once per request: the file
        is read again only when it was replaced); :class:`~sealserve.errors.ModelNotStored` if
        none, ``ValueError`` for a string that is not a model id."""
        split_model_id(model_id)
        stamp = self.store.manifest_stamp(model_id)
        if stamp is not None:
            with self._lock:
                cached = self._cache.get(model_id)
                if cached is not None and self._stamps.get(model_id) == stamp:
                    return cached
        try:
            manifest = self.store.get(model_id)
        except ModelNotStored:
            with self._lock:
                self._cache.pop(model_id, None)
                self._stamps.pop(model_id, None)
            raise ModelNotStored(f"no model {model_id} in the model store") from None
        with self._lock:
            self._cache[model_id] = manifest
            if stamp is not None:
                self._stamps[model_id] = stamp
        return manifest

    def __contains__(self, model_id: object) -> bool:
        if not isinstance(model_id, str):
            return False
        try:
            self.get(model_id)
        except (ModelNotStored, ValueError):
            return False
        return True

    def memory_mb(self, model_id: str) -> float:
        """What ``model_id`` takes in a runtime's memory budget, in MiB (from the manifest
        last read: the router asks often)."""
        with self._lock:
            manifest = self._cache.get(model_id)
        if manifest is None:
            manifest = self.get(model_id)
        return manifest.size * self.memory_factor / _MIB

    def list(self) -> list[ModelManifest]:
        """Every stored model, by id."""
        return self.store.list()

    def __repr__(self) -> str:
        return f"ModelCatalog({self.store.location!r}, memory_factor={self.memory_factor})"
