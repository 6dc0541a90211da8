"""The configuration schema: the one place that says what each config key may hold.

``config.schema.yaml``, package data of this library (``src/nucleistyle/schemas/``), owns every
key's type, range, choices, default and description. The workflow and the command line check a
whole configuration with :func:`validate` before any job runs; each section's settings
dataclass checks its own values with :func:`check` against the same schema node when it is
built (from the validated config, a stored checkpoint or the Python API), so a range is written
once and every path reports a bad value the same way, as ``config key <section>.<key>: <what is
wrong>``. The dataclasses keep only the rules that involve several keys.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
from collections.abc import Iterator, Mapping, MutableMapping
from importlib.resources.abc import Traversable
from typing import Any

import jsonschema
import yaml

from nucleistyle.errors import NucleistyleError

__all__ = [
    "bounds",
    "check",
    "choices",
    "load_schema",
    "plain",
    "schema_file",
    "validate",
]


def schema_file() -> Traversable:
    """The schema file, shipped inside the package (an installed wheel has it too)."""
    return importlib.resources.files("nucleistyle") / "schemas" / "config.schema.yaml"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed schema (read once per process; do not modify it)."""
    schema: dict[str, Any] = yaml.safe_load(schema_file().read_text(encoding="utf-8"))
    return schema


def _node(schema: Mapping[str, Any], pointer: str) -> dict[str, Any]:
    node: Any = schema
    for part in pointer.removeprefix("#").strip("/").split("/"):
        if part:
            node = node[part]
    return dict(node)


@functools.cache
def _validator(pointer: str) -> Any:
    schema = load_schema()
    node = _node(schema, pointer)
    return jsonschema.Draft202012Validator({"$defs": schema.get("$defs", {}), **node})


def plain(value: Any) -> Any:
    """Settings as JSON data: dataclasses as mappings, tuples as lists, numpy scalars as numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        return value.item()
    return value


def _non_finite(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, float) and not math.isfinite(value):
        yield path
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{path}.{index}")


def _key(error: jsonschema.ValidationError, prefix: str = "") -> str:
    parts = [prefix] if prefix else []
    return ".".join(parts + [str(p) for p in error.absolute_path]) or "<top level>"


def _raise_first(errors: list[jsonschema.ValidationError], prefix: str = "") -> None:
    if errors:
        ordered = sorted(errors, key=lambda e: (len(e.absolute_path), str(e.path)))
        error = jsonschema.exceptions.best_match(ordered)
        message = error.message.replace("\n", " ")
        raise NucleistyleError(f"config key {_key(error, prefix)}: {message}")


def check(values: Any, pointer: str, key: str, skip: tuple[str, ...] = ()) -> None:
    """Check settings against the schema node at ``pointer`` (e.g. ``#/properties/gan``).

    Args:
        values: the settings (a dataclass, a mapping or one value).
        pointer: a JSON pointer into the schema.
        key: the config key the values come from, used in the message (``gan``,
            ``segment.model``).
        skip: fields of ``values`` that this node does not describe (set from other keys,
            such as the global ``seed``).

    Raises:
        NucleistyleError: ``config key <key>.<field>: <message>`` for the first violation,
            or a number that is NaN or infinite.
    """
    data = plain(values)
    if skip:
        data = {k: v for k, v in data.items() if k not in skip}
    for path in _non_finite(data, key):
        raise NucleistyleError(f"config key {path}: must be a finite number")
    _raise_first(list(_validator(pointer).iter_errors(data)), key)


def choices(key: str) -> tuple[str, ...]:
    """The allowed values (``enum``) of a dotted config key."""
    node: Any = load_schema()
    for part in key.split("."):
        node = node["properties"][part]
    return tuple(node["enum"])


def bounds(key: str) -> dict[str, float]:
    """minimum / maximum / exclusiveMinimum / exclusiveMaximum of a dotted config key."""
    node: Any = load_schema()
    for part in key.split("."):
        node = node["properties"][part]
    names = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    return {name: node[name] for name in names if name in node}


def _with_defaults(validator_class: Any) -> Any:
    """A validator that fills each missing property with its schema default before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(
        validator: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]
    ) -> Iterator[Any]:
        if isinstance(instance, MutableMapping):
            for name, sub in properties.items():
                if "$ref" in sub:
                    sub = validator._resolver.lookup(sub["$ref"]).contents
                if "default" in sub and name not in instance:
                    instance[name] = yaml.safe_load(yaml.safe_dump(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate(config: MutableMapping[str, Any]) -> None:
    """Check a whole configuration against the schema in place, filling in defaults.

    Args:
        config: the configuration mapping (Snakemake's ``config``), modified in place.

    Raises:
        NucleistyleError: one line naming the offending key, e.g.
            ``config key data.synthetic.n_train: 1 is less than the minimum of 2``.
    """
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    _raise_first(list(validator.iter_errors(config)))
