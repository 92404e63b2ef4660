"""``${dotted.path}`` references and ``key.path=value`` overrides.

Rules (documented in docs/config.md):

* ``${a.b[2].c}`` always resolves from the top of the document; there is no scope search.
* A string that is exactly one reference takes the referenced value itself, of any type: this
  is how a block is reused (``model: ${model}`` under two trainers). Each use is an
  independent deep copy, so nothing built from one use leaks into another.
* A reference inside a longer string is formatted into it and must name a scalar
  (``ckpt_dir: ./tmp_models/${task_name}``).
* ``$${`` writes a literal ``${``.
* References may chain; a cycle is an error that lists the whole cycle.
* Overrides are applied to the raw document before references resolve, so overriding
  ``task_name`` changes every path made from it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from fcos_core.config.loader import LineMap, PathKey, format_path
from fcos_core.errors import ConfigError, FcosUserError, Problem

_REF = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")
MAX_DEPTH = 64


def parse_path(text: str) -> PathKey | None:
    """'a.b[2].c' -> ('a', 'b', 2, 'c'); None when malformed."""
    text = text.strip()
    if not text:
        return None
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == ".":
            pos += 1
        m = _PATH_PART.match(text, pos)
        if not m:
            return None
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tuple(parts)


def _get(data: Any, path: PathKey) -> Any:
    cur = data
    for part in path:
        if isinstance(cur, dict):
            if part in cur:
                cur = cur[part]
            elif isinstance(part, str) and part.isdigit() and int(part) in cur:
                cur = cur[int(part)]
            else:
                raise KeyError(part)
        elif isinstance(cur, list) and isinstance(part, int):
            cur = cur[part]
        else:
            raise KeyError(part)
    return cur


class _Resolver:
    def __init__(self, root: dict[str, Any], lines: LineMap) -> None:
        self.root = root
        self.lines = lines
        self.problems: list[Problem] = []
        self.done: dict[PathKey, Any] = {}

    def resolve_path(self, target: PathKey, stack: list[PathKey], site: PathKey) -> Any:
        if target in self.done:
            return copy.deepcopy(self.done[target])
        if target in stack:
            cycle = " -> ".join(format_path(p) for p in [*stack[stack.index(target):], target])
            raise _Abort(self.lines.problem(site, f"reference cycle: {cycle}"))
        if len(stack) > MAX_DEPTH:
            raise _Abort(self.lines.problem(site, "references nest too deeply"))
        try:
            raw = _get(self.root, target)
        except (KeyError, IndexError, TypeError):
            raise _Abort(self.lines.problem(
                site, f"reference ${{{format_path(target)}}} names a key that does not exist"
                + self._near(target))) from None
        value = self.resolve_value(raw, target, [*stack, target])
        self.done[target] = value
        return copy.deepcopy(value)

    def _near(self, target: PathKey) -> str:
        import difflib

        parent = target[:-1]
        try:
            siblings = _get(self.root, parent)
        except (KeyError, IndexError, TypeError):
            return ""
        if isinstance(siblings, dict):
            near = difflib.get_close_matches(str(target[-1]), [str(k) for k in siblings], n=1)
            if near:
                return f"; did you mean ${{{format_path((*parent, near[0]))}}}?"
        return ""

    def resolve_value(self, value: Any, path: PathKey, stack: list[PathKey]) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve_value(v, (*path, k), stack) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_value(v, (*path, i), stack) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        if not stack or stack[-1] != path:
            stack = [*stack, path]  # this string is being resolved: a way back to it is a cycle
        whole = _REF.fullmatch(value)
        if whole:
            target = parse_path(whole.group(1))
            if target is None:
                raise _Abort(self.lines.problem(path, f"malformed reference {value!r}"))
            return self.resolve_path(target, stack, path)

        def sub(m: re.Match[str]) -> str:
            target = parse_path(m.group(1))
            if target is None:
                raise _Abort(self.lines.problem(path, f"malformed reference {m.group(0)!r}"))
            got = self.resolve_path(target, stack, path)
            if isinstance(got, (dict, list)):
                raise _Abort(self.lines.problem(
                    path, f"{m.group(0)} names a {type(got).__name__}, which cannot be placed "
                          "inside a string; use the reference alone as the whole value"))
            return "" if got is None else str(got)

        out = _REF.sub(sub, value)
        if "${" in out.replace("$${", ""):
            raise _Abort(self.lines.problem(path, f"unterminated reference in {value!r}"))
        return out.replace("$${", "${")


class _Abort(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def resolve_references(data: dict[str, Any], lines: LineMap) -> dict[str, Any]:
    """Resolve every reference; all problems are collected (one per top-level key)."""
    resolver = _Resolver(data, lines)
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            out[key] = resolver.resolve_value(value, (key,), [(key,)])
        except _Abort as abort:
            resolver.problems.append(abort.problem)
    if resolver.problems:
        raise ConfigError(resolver.problems)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str], file: str | None) -> None:
    """Apply ``key.path=value`` overrides in place; values are parsed as YAML scalars/lists."""
    problems: list[Problem] = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        path = parse_path(key)
        if not sep or path is None:
            raise FcosUserError(f"override {text!r} is not of the form key.path=value",
                                hint="e.g. float_trainer.num_epochs=2")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise FcosUserError(f"override {text!r}: the value is not valid YAML ({exc})",
                                hint="quote strings that contain ':' or '#'") from None
        cur: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(cur, dict):
                if part not in cur:
                    cur[part] = {}
                cur = cur[part]
            elif isinstance(cur, list) and isinstance(part, int) and -len(cur) <= part < len(cur):
                cur = cur[part]
            else:
                problems.append(Problem(format_path(path[: i + 1]),
                                        f"override {text!r}: cannot descend here", None, file))
                break
        else:
            last = path[-1]
            if isinstance(cur, dict):
                cur[last] = value
            elif isinstance(cur, list) and isinstance(last, int) and -len(cur) <= last < len(cur):
                cur[last] = value
            else:
                problems.append(Problem(format_path(path), f"override {text!r}: no such item",
                                        None, file))
    if problems:
        raise ConfigError(problems)
