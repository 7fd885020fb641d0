"""Typed JSON bodies: one frozen dataclass per body, its strict parser, encoder and schema.

A body is declared once, as a subclass of :class:`Message` whose fields carry their rules
(``Annotated[str, Rule(pattern=...)]``); from that one declaration come the parser the
receiving side runs (:meth:`Message.from_json`), the bytes the sending side writes
(:meth:`Message.to_json`, canonical JSON) and the JSON Schema of the OpenAPI document
(:meth:`Message.json_schema`)::

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class GrantOut(Message):
        model_id: str
        revocation_epoch: Annotated[int, Rule(ge=0)]

Field types: ``str``, ``bytes`` (unpadded base64url on the wire, decoded when parsed),
``int``, ``float``, ``bool``, ``Literal[...]`` of strings, ``dict[str, Any]`` (a JSON object),
a nested :class:`Message`, and ``tuple[T, ...]`` (a JSON array) of those.  Parsing is
strict: no coercion (``"2"`` is not an int, ``true`` is not a number), floats are finite,
patterns match the whole string, base64url is its one canonical spelling, and a request body
(``Message`` subclass with ``extra_fields = False``) refuses fields it does not declare.
Every refusal is a ``ValueError`` that names the field: ``pairs.0.user_id: ...``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, Self

from sealserve.protocol._codec import b64decode, b64encode, canonical_json

__all__ = ["Message", "Rule"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """The constraints and description of one field (all optional).

    ``pattern`` is an anchored JSON Schema pattern (``^...$``); Python checks it with
    ``fullmatch`` on what is between the anchors.  ``min_length``/``max_length`` bound a
    string's characters or an array's items; ``ge``/``le`` bound a number.
    """

    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    ge: float | None = None
    le: float | None = None
    description: str | None = None


_Check = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    check: _Check
    schema: dict[str, Any]
    required: bool
    encode: Callable[[Any], Any]


_FIELDS: dict[type, tuple[_Field, ...]] = {}
#: Per class, its ``to_dict``: one dict display over its fields (it runs per answer).
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}
_B64_PATTERN: Final = "^[A-Za-z0-9_-]*$"


class Message:
    """Base of the typed bodies; subclasses are frozen, keyword-only dataclasses."""

    __slots__ = ()

    #: Whether a parsed body may carry fields this class does not declare (they are ignored).
    #: Request bodies say ``False``: an unknown field is refused.
    extra_fields: ClassVar[bool] = True

    @classmethod
    def from_json(cls, body: bytes | str) -> Self:
        """Parse a JSON body; ``ValueError`` naming the first thing wrong with it."""
        try:
            doc = json.loads(body or b"null")
        except (ValueError, RecursionError):
            raise ValueError("body: not JSON") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Self:
        """Check a decoded JSON value against this body's fields and build it."""
        return cls._parse(doc, "")

    @classmethod
    def _parse(cls, doc: Any, where: str) -> Self:
        if not isinstance(doc, dict):
            raise ValueError(f"{where or 'body'}: must be a JSON object")
        fields = _fields(cls)
        values: dict[str, Any] = {}
        for field in fields:
            path = f"{where}.{field.name}" if where else field.name
            if field.name in doc:
                values[field.name] = field.check(doc[field.name], path)
            elif field.required:
                raise ValueError(f"{path}: field required")
        if not cls.extra_fields and len(values) != len(doc):
            known = {f.name for f in fields}
            extra = sorted(str(k) for k in doc if k not in known)
            path = f"{where}.{extra[0]}" if where else extra[0]
            raise ValueError(f"{path}: unknown field")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this body (nested bodies and tuples as objects and arrays)."""
        encoder = _ENCODERS.get(type(self)) or _encoder(type(self))
        return encoder(self)

    def to_json(self) -> bytes:
        """The canonical JSON of this body: sorted keys, no spaces, ASCII."""
        return canonical_json(self.to_dict())

    @classmethod
    def json_schema(cls) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """This body's JSON Schema and those of the bodies it nests, by class name; nested
        bodies are referred to as ``#/components/schemas/<name>``."""
        defs: dict[str, dict[str, Any]] = {}
        _collect(cls, defs)
        return defs.pop(cls.__name__), defs


def _collect(cls: type[Message], defs: dict[str, dict[str, Any]]) -> None:
    fields = _fields(cls)
    schema: dict[str, Any] = {
        "type": "object",
        "title": cls.__name__,
        "properties": {f.name: f.schema for f in fields},
        "required": [f.name for f in fields if f.required],
    }
    if not cls.extra_fields:
        schema["additionalProperties"] = False
    defs[cls.__name__] = schema
    for nested in _nested(cls):
        if nested.__name__ not in defs:
            _collect(nested, defs)


def _nested(cls: type[Message]) -> list[type[Message]]:
    found: list[type[Message]] = []
    for hint in typing.get_type_hints(cls).values():
        for arg in (hint, *typing.get_args(hint)):
            if isinstance(arg, type) and issubclass(arg, Message):
                found.append(arg)
    return found


def _fields(cls: type) -> tuple[_Field, ...]:
    cached = _FIELDS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls, include_extras=True)
    built = []
    for field in dataclasses.fields(cls):
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        check, schema, encode = _compile(hints[field.name])
        built.append(_Field(field.name, check, schema, required, encode))
    result = tuple(built)
    _FIELDS[cls] = result
    return result


def _encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """``to_dict`` of ``cls`` as one dict display, as :mod:`dataclasses` builds ``__init__``:
    the field names are the class's own identifiers, the encoders are passed in, not spelled."""
    fields = _fields(cls)
    namespace: dict[str, Any] = {}
    items = []
    for i, field in enumerate(fields):
        if not field.name.isidentifier():
            raise TypeError(f"field name {field.name!r} is not an identifier")
        if field.encode is _identity:
            items.append(f"{field.name!r}: self.{field.name}")
        else:
            namespace[f"_encode_{i}"] = field.encode
            items.append(f"{field.name!r}: _encode_{i}(self.{field.name})")
    source = "def to_dict(self):\n    return {" + ", ".join(items) + "}\n"
    exec(source, namespace)  # noqa: S102 - built from field identifiers only
    encoder: Callable[[Any], dict[str, Any]] = namespace["to_dict"]
    _ENCODERS[cls] = encoder
    return encoder


def _identity(value: Any) -> Any:
    return value


def _compile(hint: Any) -> tuple[_Check, dict[str, Any], Callable[[Any], Any]]:
    rule = Rule()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        for extra in extras:  # Annotated[Annotated[str, a], b] is Annotated[str, a, b]
            if isinstance(extra, Rule):
                given = {f.name: getattr(extra, f.name) for f in dataclasses.fields(Rule)}
                rule = dataclasses.replace(
                    rule, **{k: v for k, v in given.items() if v is not None}
                )
    schema: dict[str, Any] = {}
    if rule.description:
        schema["description"] = rule.description
    origin = typing.get_origin(hint)
    if hint is str:
        return _string(rule, schema), schema, _identity
    if hint is bytes:
        return _base64(rule, schema), schema, b64encode
    if hint is bool:
        schema["type"] = "boolean"
        return _bool, schema, _identity
    if hint is int or hint is float:
        return _number(hint, rule, schema), schema, _identity
    if origin is Literal:
        allowed = typing.get_args(hint)
        schema.update(type="string", enum=list(allowed))
        return _literal(allowed), schema, _identity
    if origin is dict:
        schema["type"] = "object"
        return _object, schema, _identity
    if origin is tuple:
        item, ellipsis = typing.get_args(hint)
        if ellipsis is not Ellipsis:
            raise TypeError(f"only tuple[T, ...] is a JSON array, not {hint!r}")
        check_item, item_schema, encode_item = _compile(item)
        schema.update(type="array", items=item_schema)
        if rule.min_length is not None:
            schema["minItems"] = rule.min_length
        if rule.max_length is not None:
            schema["maxItems"] = rule.max_length
        return (
            _array(check_item, rule),
            schema,
            lambda values: [encode_item(v) for v in values],
        )
    if isinstance(hint, type) and issubclass(hint, Message):
        body: type[Message] = hint
        schema["$ref"] = f"#/components/schemas/{body.__name__}"
        return (lambda value, where: body._parse(value, where)), schema, _to_dict
    raise TypeError(f"unsupported field type {hint!r}")


def _to_dict(value: Message) -> dict[str, Any]:
    return value.to_dict()


def _string(rule: Rule, schema: dict[str, Any]) -> _Check:
    schema["type"] = "string"
    regex = None
    if rule.pattern is not None:
        schema["pattern"] = rule.pattern
        regex = re.compile(rule.pattern.removeprefix("^").removesuffix("$"))
    if rule.min_length is not None:
        schema["minLength"] = rule.min_length
    if rule.max_length is not None:
        schema["maxLength"] = rule.max_length
    low, high = rule.min_length, rule.max_length

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string")
        if low is not None and len(value) < low:
            raise ValueError(f"{where}: must have at least {low} characters")
        if high is not None and len(value) > high:
            raise ValueError(f"{where}: must have at most {high} characters")
        if regex is not None and not regex.fullmatch(value):
            raise ValueError(f"{where}: must match {rule.pattern}")
        return value

    return check


def _base64(rule: Rule, schema: dict[str, Any]) -> _Check:
    schema.update(type="string", pattern=_B64_PATTERN, contentEncoding="base64url")
    if rule.max_length is not None:
        schema["maxLength"] = rule.max_length
    high = rule.max_length

    def check(value: Any, where: str) -> bytes:
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string")
        if high is not None and len(value) > high:
            raise ValueError(f"{where}: must have at most {high} characters")
        try:
            return b64decode(value, name=where)
        except ValueError:
            raise ValueError(f"{where}: must be unpadded base64url") from None

    return check


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: must be true or false")
    return value


def _number(kind: type, rule: Rule, schema: dict[str, Any]) -> _Check:
    schema["type"] = "integer" if kind is int else "number"
    if rule.ge is not None:
        schema["minimum"] = rule.ge
    if rule.le is not None:
        schema["maximum"] = rule.le
    low, high = rule.ge, rule.le
    accepted = (int,) if kind is int else (int, float)

    def check(value: Any, where: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ValueError(f"{where}: must be {'an integer' if kind is int else 'a number'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: must be finite")
        if low is not None and value < low:
            raise ValueError(f"{where}: must be >= {low}")
        if high is not None and value > high:
            raise ValueError(f"{where}: must be <= {high}")
        return float(value) if kind is float else value

    return check


def _literal(allowed: tuple[Any, ...]) -> _Check:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{where}: must be one of {', '.join(map(repr, allowed))}")
        return value

    return check


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a JSON object")
    return value


def _array(check_item: _Check, rule: Rule) -> _Check:
    low, high = rule.min_length, rule.max_length

    def check(value: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"{where}: must be an array")
        if low is not None and len(value) < low:
            raise ValueError(f"{where}: must have at least {low} items")
        if high is not None and len(value) > high:
            raise ValueError(f"{where}: must have at most {high} items")
        return tuple(check_item(item, f"{where}.{i}") for i, item in enumerate(value))

    return check
