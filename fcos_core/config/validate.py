"""Validate a resolved config against component schemas; every problem is reported at once.

The result is a tree of :class:`Node` objects (one per component block) that
:mod:`fcos_core.build` turns into objects when a stage runs. Validation imports no torch.
"""

from __future__ import annotations

import difflib
from typing import Any

import attrs

from fcos_core.config.loader import LineMap, PathKey
from fcos_core.errors import Problem
from fcos_core.registry import Entry, Registries
from fcos_core.schema import FieldInfo, check_type, coerce, describe_type, fields_of


@attrs.define
class Node:
    """A validated component block: its registry entry and checked keyword arguments."""

    entry: Entry
    kwargs: dict[str, Any]
    path: PathKey
    fields: dict[str, FieldInfo]
    line: int | None = None
    file: str | None = None


@attrs.define
class NamedRef:
    """A validated function chosen by name (``collate_fn: collate_2d``)."""

    entry: Entry
    path: PathKey


class Validator:
    """Walks values against schema fields, collecting :class:`Problem` objects."""

    def __init__(
        self, registries: Registries, lines: LineMap, broken: dict[str, list[str]] | None = None
    ) -> None:
        self.registries = registries
        self.lines = lines
        self.problems: list[Problem] = []
        # kind -> names of plugins that failed to load (to explain unknown types)
        self.broken = broken or {}

    def problem(self, path: PathKey, message: str) -> None:
        self.problems.append(self.lines.problem(path, message))

    # -- schemas ----------------------------------------------------------------------------

    def check_schema(
        self, schema: type | None, value: Any, path: PathKey, what: str, skip: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """Check a mapping against an attrs schema; returns checked kwargs (None on failure)."""
        if not isinstance(value, dict):
            self.problem(path, f"{what} must be a mapping of arguments, got {type(value).__name__}")
            return None
        if schema is None:
            return {k: v for k, v in value.items() if k not in skip}
        fields = fields_of(schema)
        ok = True
        out: dict[str, Any] = {}
        for key in value:
            if key in skip:
                continue
            moved = getattr(schema, "MOVED_KEYS", {})
            if key not in fields and key in moved:
                self.problem(
                    (*path, key),
                    f"{what} no longer takes {key!r}: write "
                    f"{moved[key].format(value=value[key])} instead",
                )
                ok = False
                continue
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                valid = ", ".join(fields) or "(none)"
                self.problem(
                    (*path, key), f"unknown key {key!r} for {what}{hint} (valid keys: {valid})"
                )
                ok = False
        for name, field in fields.items():
            if name not in value:
                if field.required:
                    self.problem(path, f"{what} is missing required key {name!r} ({field.help})")
                    ok = False
                continue
            checked = self.check_field(field, value[name], (*path, name))
            if checked is _BAD:
                ok = False
            else:
                out[name] = checked
        return out if ok else None

    def check_field(self, field: FieldInfo, value: Any, path: PathKey) -> Any:
        if field.kind is not None:
            if value is None and not field.required and field.default is None:
                return None
            if field.shape == "named":
                return self.check_named(field.kind, value, path)
            if field.shape == "list":
                if not isinstance(value, list):
                    self.problem(
                        path, f"expected a list of {field.kind} blocks, got {type(value).__name__}"
                    )
                    return _BAD
                items = [
                    self.check_component(field.kind, v, (*path, i)) for i, v in enumerate(value)
                ]
                return _BAD if any(i is _BAD for i in items) else items
            return self.check_component(field.kind, value, path)
        why = check_type(value, field.type)
        if why is not None:
            self.problem(path, f"{why} (expected {describe_type(field.type)})")
            return _BAD
        return coerce(value, field.type)

    # -- components -------------------------------------------------------------------------

    def check_component(self, kind: str, value: Any, path: PathKey) -> Any:
        """Validate one ``{type: NAME, ...}`` block (a bare string means ``{type: NAME}``)."""
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            self.problem(
                path,
                f"expected a {kind} block like {{type: NAME, ...}}, got {type(value).__name__}",
            )
            return _BAD
        if "type" not in value:
            self.problem(
                path,
                f"this {kind} block has no 'type' key (one of: "
                f"{', '.join(self.registries[kind].names()) or 'none registered'})",
            )
            return _BAD
        name = value["type"]
        if not isinstance(name, str):
            self.problem((*path, "type"), f"'type' must be a string, got {type(name).__name__}")
            return _BAD
        entry = self.lookup(kind, name, (*path, "type"))
        if entry is None:
            return _BAD
        kwargs = self.check_schema(entry.schema, value, path, f"{kind} {name!r}", skip=("type",))
        if kwargs is None:
            return _BAD
        return Node(
            entry,
            kwargs,
            path,
            fields_of(entry.schema) if entry.schema else {},
            self.lines.line(path),
            self.lines.file,
        )

    def check_named(self, kind: str, value: Any, path: PathKey) -> Any:
        if not isinstance(value, str):
            self.problem(
                path, f"expected the name of a registered {kind} entry, got {type(value).__name__}"
            )
            return _BAD
        entry = self.lookup(kind, value, path)
        return _BAD if entry is None else NamedRef(entry, path)

    def lookup(self, kind: str, name: str, path: PathKey) -> Entry | None:
        registry = self.registries[kind]
        entry = registry.get(name)
        if entry is None:
            msg, hint = registry.unknown_message(name, self.broken.get(kind, []))
            self.problem(path, f"{msg}. {hint}")
        return entry


class _Bad:
    def __repr__(self) -> str:
        return "<invalid>"


_BAD = _Bad()
