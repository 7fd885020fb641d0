"""The simulator's cost model: what a cold start, a model load and an inference cost.

It is a JSON file, written by a measurement (``sealserve bench packer --measure-costs``
measures onnxruntime on this machine today; the sealed runtime's own measurement will write
the same schema)::

    {
      "schema": "sealserve.packer.costs/1",
      "source": "onnxruntime",            # what was measured: onnxruntime, or the runtime
      "cold_start_ms": 812.0,             # a new instance, from nothing to ready to load
      "runtime_base_mb": 96.0,            # resident memory of a runtime with no model
      "models": {
        "mobilenet_v2": {
          "load_ms": 61.0,                # fetch + unseal + session creation
          "infer_ms": 5.1,                # one batch-1 inference
          "memory_mb": 31.0,              # what the model adds to the runtime's memory
          "file_mb": 14.0                 # optional: the model file
        }
      },
      "methods": {"cold_start_ms": "how it was measured", "...": "..."},
      "environment": {"python": "3.11.9", "cpus": 2}
    }

Every number must be finite and positive (``file_mb`` may be absent).  A trace may name models
that are not in the file: each takes the costs of the model chosen from its name by a stable
hash (SHA-256, the same on every machine and run), never Python's salted ``hash()``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["COSTS_SCHEMA", "CostModel", "ModelCosts"]

COSTS_SCHEMA = "sealserve.packer.costs/1"


def _positive(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"cost model: {where} has value {value!r}. Not a number.")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"cost model: {where} has value {value!r}. Must be finite and > 0.")
    return float(value)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelCosts:
    """The measured costs of one model, in seconds and MB."""

    load_s: float
    infer_s: float
    memory_mb: float
    file_mb: float | None = None

    def __post_init__(self) -> None:
        for name in ("load_s", "infer_s", "memory_mb"):
            _positive(name, getattr(self, name))
        if self.file_mb is not None:
            _positive("file_mb", self.file_mb)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "load_ms": round(self.load_s * 1000, 3),
            "infer_ms": round(self.infer_s * 1000, 3),
            "memory_mb": round(self.memory_mb, 3),
        }
        if self.file_mb is not None:
            out["file_mb"] = round(self.file_mb, 3)
        return out


@functools.lru_cache(maxsize=4096)
def _pick(names: tuple[str, ...], name: str) -> str:
    """The name among ``names`` (sorted) that ``name``'s SHA-256 picks: stable everywhere."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return names[int.from_bytes(digest[:8], "big") % len(names)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    """Cold start, runtime memory, and per-model costs, with how each was measured."""

    cold_start_s: float
    runtime_base_mb: float
    models: Mapping[str, ModelCosts]
    source: str = "unspecified"
    methods: Mapping[str, str] = dataclasses.field(default_factory=dict)
    environment: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("cold_start_ms", self.cold_start_s)
        _positive("runtime_base_mb", self.runtime_base_mb)
        if not self.models:
            raise ValueError("cost model: 'models' is empty. Measure at least one model.")
        for name, costs in self.models.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"cost model: model name {name!r} is not a non-empty string.")
            if not isinstance(costs, ModelCosts):
                raise TypeError(f"cost model: models[{name!r}] must be ModelCosts")
        object.__setattr__(self, "models", dict(sorted(self.models.items())))

    # -- per model ---------------------------------------------------------------------------

    def zoo_model_for(self, name: str) -> str:
        """``name`` if it was measured, else the measured model its stable hash picks."""
        if name in self.models:
            return name
        return _pick(tuple(self.models), name)

    def costs_for(self, name: str) -> ModelCosts:
        return self.models[self.zoo_model_for(name)]

    def infer_s(self, model: str) -> float:
        return self.costs_for(model).infer_s

    def load_s(self, model: str) -> float:
        return self.costs_for(model).load_s

    def memory_mb(self, model: str) -> float:
        return self.costs_for(model).memory_mb

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": COSTS_SCHEMA,
            "source": self.source,
            "cold_start_ms": round(self.cold_start_s * 1000, 3),
            "runtime_base_mb": round(self.runtime_base_mb, 3),
            "models": {name: c.to_json() for name, c in self.models.items()},
            "methods": dict(self.methods),
            "environment": dict(self.environment),
        }

    @classmethod
    def from_json(cls, data: Any) -> CostModel:
        """Parse and validate a cost model; errors name the field and the value."""
        if not isinstance(data, dict):
            raise ValueError(f"cost model: expected a JSON object, got {type(data).__name__}.")
        schema = data.get("schema")
        if schema != COSTS_SCHEMA:
            raise ValueError(
                f"cost model: 'schema' has value {schema!r}. Expected {COSTS_SCHEMA!r}."
            )
        for key in ("cold_start_ms", "runtime_base_mb", "models"):
            if key not in data:
                raise ValueError(f"cost model: missing {key!r}.")
        raw_models = data["models"]
        if not isinstance(raw_models, dict) or not raw_models:
            raise ValueError("cost model: 'models' must be a non-empty object of model costs.")
        models: dict[str, ModelCosts] = {}
        for name, entry in raw_models.items():
            if not isinstance(entry, dict):
                raise ValueError(f"cost model: models.{name} must be an object.")
            for key in ("load_ms", "infer_ms", "memory_mb"):
                if key not in entry:
                    raise ValueError(f"cost model: models.{name} is missing {key!r}.")
            file_mb = entry.get("file_mb")
            models[name] = ModelCosts(
                load_s=_positive(f"models.{name}.load_ms", entry["load_ms"]) / 1000,
                infer_s=_positive(f"models.{name}.infer_ms", entry["infer_ms"]) / 1000,
                memory_mb=_positive(f"models.{name}.memory_mb", entry["memory_mb"]),
                file_mb=None if file_mb is None else _positive(f"models.{name}.file_mb", file_mb),
            )
        methods = data.get("methods", {})
        environment = data.get("environment", {})
        if not isinstance(methods, dict) or not all(isinstance(v, str) for v in methods.values()):
            raise ValueError("cost model: 'methods' must be an object of strings.")
        if not isinstance(environment, dict):
            raise ValueError("cost model: 'environment' must be an object.")
        source = data.get("source", "unspecified")
        if not isinstance(source, str):
            raise ValueError(f"cost model: 'source' has value {source!r}. Not a string.")
        return cls(
            cold_start_s=_positive("cold_start_ms", data["cold_start_ms"]) / 1000,
            runtime_base_mb=_positive("runtime_base_mb", data["runtime_base_mb"]),
            models=models,
            source=source,
            methods=methods,
            environment=environment,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostModel:
        """Read a cost model file; a missing or malformed file raises ``ValueError``."""
        target = Path(path)
        try:
            text = target.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"cost model file '{target}' does not exist.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cost model file '{target}' is not valid JSON: {exc}.") from exc
        return cls.from_json(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)
        return target
