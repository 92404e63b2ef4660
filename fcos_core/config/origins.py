"""Where each value of a resolved config came from, for ``fcos config show --resolved``.

A value comes from a line of the file, from a ``key.path=value`` override, or through one or
more ``${...}`` references from another key (itself from a line or an override). The resolved
document is printed as YAML with that origin as a comment after each value, so the output
still loads to the same data."""

from __future__ import annotations

from typing import Any

import yaml

from fcos_core.config.loader import LineMap, PathKey, format_path
from fcos_core.config.references import REFERENCE_RE, AppliedOverride, get_path, whole_reference

#: references followed from one value before giving up (the config resolved, so no cycles)
_MAX_HOPS = 64


def value_origins(
    raw: dict[str, Any], lines: LineMap, overrides: list[AppliedOverride]
) -> dict[PathKey, str]:
    """Resolved path -> where its value came from, for every value (containers included)."""
    by_path = {o.path: o.text for o in overrides}
    out: dict[PathKey, str] = {}

    def source(src: PathKey) -> str:
        if src in by_path:
            return f"override {by_path[src]}"
        line = lines.line(src)
        return f"line {line}" if line is not None else "the file"

    def walk(value: Any, src: PathKey, dst: PathKey, hops: tuple[PathKey, ...]) -> None:
        target = whole_reference(value)
        if target is not None and len(hops) < _MAX_HOPS:
            try:
                walk(get_path(raw, target), target, dst, (*hops, src))
                return
            except (KeyError, IndexError, TypeError):
                pass
        # reached through references: name the key the value was written under
        where = f"{format_path(src)}, {source(src)}" if hops else source(src)
        if isinstance(value, str) and REFERENCE_RE.search(value):
            refs = ", ".join(m.group(0) for m in REFERENCE_RE.finditer(value))
            where += ", formatted from " + refs
        out[dst] = where
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*src, k), (*dst, k), hops)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*src, i), (*dst, i), hops)

    for key, value in raw.items():
        walk(value, (key,), (key,), ())
    return out


def _scalar(value: Any) -> str:
    """One scalar (or empty container) as YAML flow text."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**9).strip()[1:-1]


def dump_with_origins(data: dict[str, Any], origins: dict[PathKey, str]) -> str:
    """``data`` as block YAML with ``# origin`` after each value; loads back to ``data``."""
    out: list[str] = []

    def note(path: PathKey) -> str:
        return f"  # {origins[path]}" if path in origins else ""

    def emit(value: Any, path: PathKey, indent: int) -> None:
        pad = " " * indent
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            head = f"{pad}{_scalar(k)}:" if isinstance(value, dict) else f"{pad}-"
            child = (*path, k)
            if isinstance(v, (dict, list)) and v:
                out.append(head + note(child))
                emit(v, child, indent + 2)
            else:
                out.append(f"{head} {_scalar(v)}{note(child)}")

    emit(data, (), 0)
    return "\n".join(out) + "\n"
