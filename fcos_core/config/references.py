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
* Expansion has a budget: references that copy blocks which themselves copy blocks grow
  exponentially (each level doubling the document), so at most :data:`MAX_REFERENCE_NODES`
  values and :data:`MAX_REFERENCE_CHARS` characters of formatted strings may be produced while
  resolving; beyond that the config is refused with an error naming the key.
* Overrides are applied to the raw document before references resolve, so overriding
  ``task_name`` changes every path made from it. An override whose path runs through a key
  holding a whole-value reference is applied where the reference points (and says so).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import attrs
import yaml

from fcos_core.config.loader import LineMap, PathKey, format_path
from fcos_core.errors import ConfigError, FcosUserError, Problem

REFERENCE_RE = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")
MAX_DEPTH = 64
#: values (mappings, lists, scalars) resolving may produce, copies included; a real config
#: resolves to a few thousand (configs/fcos_b0*.yaml: about 3,000)
MAX_REFERENCE_NODES = 200_000
#: characters of strings formatted from references (``a-${b}-${b}``), all strings together
MAX_REFERENCE_CHARS = 4 * 1024 * 1024


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


def get_path(data: Any, path: PathKey) -> Any:
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
        self.sizes: dict[PathKey, int] = {}  # values in done[target], copies included
        self.nodes = 0  # values produced so far (the expansion budget)
        self.chars = 0  # characters of formatted strings produced so far

    def _charge(self, nodes: int, site: PathKey) -> None:
        """Count ``nodes`` more produced values; over the budget is an error at ``site``."""
        self.nodes += nodes
        if self.nodes > MAX_REFERENCE_NODES:
            raise _Abort(
                self.lines.problem(
                    site,
                    f"${{...}} references expand to more than {MAX_REFERENCE_NODES} values "
                    f"(the reference expansion budget) while resolving {format_path(site)!r}; "
                    "references that copy blocks which copy blocks grow exponentially -- "
                    "reference the block once instead of copying copies",
                ),
                fatal=True,
            )

    def _copy(self, target: PathKey, site: PathKey) -> Any:
        self._charge(self.sizes.get(target, 1), site)  # before the copy is made
        return copy.deepcopy(self.done[target])

    def resolve_path(self, target: PathKey, stack: list[PathKey], site: PathKey) -> Any:
        if target in self.done:
            return self._copy(target, site)
        if target in stack:
            cycle = " -> ".join(format_path(p) for p in [*stack[stack.index(target) :], target])
            raise _Abort(self.lines.problem(site, f"reference cycle: {cycle}"))
        if len(stack) > MAX_DEPTH:
            raise _Abort(self.lines.problem(site, "references nest too deeply"))
        try:
            raw = get_path(self.root, target)
        except (KeyError, IndexError, TypeError):
            raise _Abort(
                self.lines.problem(
                    site,
                    f"reference ${{{format_path(target)}}} names a key that does not exist"
                    + self._near(target),
                )
            ) from None
        value = self.resolve_value(raw, target, [*stack, target])
        self.done[target] = value
        self.sizes[target] = _count(value)
        return self._copy(target, site)

    def _near(self, target: PathKey) -> str:
        import difflib

        parent = target[:-1]
        try:
            siblings = get_path(self.root, parent)
        except (KeyError, IndexError, TypeError):
            return ""
        if isinstance(siblings, dict):
            near = difflib.get_close_matches(str(target[-1]), [str(k) for k in siblings], n=1)
            if near:
                return f"; did you mean ${{{format_path((*parent, near[0]))}}}?"
        return ""

    def resolve_value(self, value: Any, path: PathKey, stack: list[PathKey]) -> Any:
        self._charge(1, path)
        if isinstance(value, dict):
            return {k: self.resolve_value(v, (*path, k), stack) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_value(v, (*path, i), stack) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        if not stack or stack[-1] != path:
            stack = [*stack, path]  # this string is being resolved: a way back to it is a cycle
        whole = REFERENCE_RE.fullmatch(value)
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
                raise _Abort(
                    self.lines.problem(
                        path,
                        f"{m.group(0)} names a {type(got).__name__}, which cannot be placed "
                        "inside a string; use the reference alone as the whole value",
                    )
                )
            text = "" if got is None else str(got)
            self.chars += len(text)
            if self.chars > MAX_REFERENCE_CHARS:
                raise _Abort(
                    self.lines.problem(
                        path,
                        f"strings formatted from ${{...}} references exceed "
                        f"{MAX_REFERENCE_CHARS} characters (the reference expansion budget) "
                        f"while resolving {format_path(path)!r}; strings built from strings "
                        "built from references grow exponentially",
                    ),
                    fatal=True,
                )
            return text

        out = REFERENCE_RE.sub(sub, value)
        if "${" in out.replace("$${", ""):
            raise _Abort(self.lines.problem(path, f"unterminated reference in {value!r}"))
        return out.replace("$${", "${")


def _count(value: Any) -> int:
    """Mappings, lists and scalars in ``value`` (what a deep copy of it produces)."""
    n, todo = 0, [value]
    while todo:
        v = todo.pop()
        n += 1
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return n


class _Abort(Exception):
    def __init__(self, problem: Problem, fatal: bool = False) -> None:
        self.problem = problem
        self.fatal = fatal  # the expansion budget is spent: resolving other keys is pointless


def resolve_references(data: dict[str, Any], lines: LineMap) -> dict[str, Any]:
    """Resolve every reference; all problems are collected (one per top-level key)."""
    resolver = _Resolver(data, lines)
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            out[key] = resolver.resolve_value(value, (key,), [(key,)])
        except _Abort as abort:
            resolver.problems.append(abort.problem)
            if abort.fatal:
                break
    if resolver.problems:
        raise ConfigError(resolver.problems)
    return out


@attrs.frozen
class AppliedOverride:
    """One ``key.path=value`` override as applied: ``path`` is where the value went, which
    differs from the path written when the written one runs through a ``${...}`` reference
    (``model.backbone.use_se_block`` with ``model.backbone: ${vars.backbone}`` lands on
    ``vars.backbone.use_se_block``); ``via`` lists the references followed, as
    ``(key that holds the reference, key it names)``."""

    text: str
    path: PathKey
    via: tuple[tuple[PathKey, PathKey], ...] = ()

    def note(self) -> str | None:
        """What to tell the user when the override went somewhere else than written."""
        if not self.via:
            return None
        hops = "; ".join(f"{format_path(src)} is ${{{format_path(dst)}}}" for src, dst in self.via)
        return (
            f"override {self.text!r} applied to {format_path(self.path)} ({hops}): every "
            f"key that references {format_path(self.via[-1][1])} sees the new value"
        )


def whole_reference(value: Any) -> PathKey | None:
    """The path a string that is exactly one ``${...}`` reference names, else None."""
    if isinstance(value, str):
        m = REFERENCE_RE.fullmatch(value)
        if m:
            return parse_path(m.group(1))
    return None


def _descend(
    data: dict[str, Any], path: PathKey, text: str, file: str | None
) -> tuple[Any, PathKey, list[tuple[PathKey, PathKey]]] | Problem:
    """Walk to the parent of ``path``'s last part, creating missing mappings and following
    whole-value references on the way; returns (parent, final path, references followed)."""
    via: list[tuple[PathKey, PathKey]] = []
    done: PathKey = ()
    todo = list(path[:-1])
    cur: Any = data
    while todo:
        part = todo.pop(0)
        if isinstance(cur, dict):
            if part not in cur:
                cur[part] = {}
            nxt = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and -len(cur) <= part < len(cur):
            nxt = cur[part]
        else:
            return Problem(
                format_path((*done, part)), f"override {text!r}: cannot descend here", None, file
            )
        done = (*done, part)
        target = whole_reference(nxt)
        if target is not None:
            # the key holds ``${target}``: the override means the referenced block
            if len(via) >= MAX_DEPTH or any(dst == target for _, dst in via):
                return Problem(
                    format_path(done),
                    f"override {text!r}: the references from here form a cycle",
                    None,
                    file,
                )
            via.append((done, target))
            todo = [*target, *todo]
            done, cur = (), data
            continue
        cur = nxt
    return cur, (*done, path[-1]), via


def apply_overrides(
    data: dict[str, Any], overrides: list[str], file: str | None
) -> list[AppliedOverride]:
    """Apply ``key.path=value`` overrides in place; values are parsed as YAML scalars/lists.

    A path that runs through a key holding a whole-value reference (``model.backbone:
    ${vars.backbone}``) is applied where the reference points (``vars.backbone.x``), so every
    user of that block sees it; the returned records say where each override went
    (:meth:`AppliedOverride.note` tells the user)."""
    problems: list[Problem] = []
    applied: list[AppliedOverride] = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        path = parse_path(key)
        if not sep or path is None:
            raise FcosUserError(
                f"override {text!r} is not of the form key.path=value",
                hint="e.g. float_trainer.num_epochs=2",
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise FcosUserError(
                f"override {text!r}: the value is not valid YAML ({exc})",
                hint="quote strings that contain ':' or '#'",
            ) from None
        got = _descend(data, path, text, file)
        if isinstance(got, Problem):
            problems.append(got)
            continue
        cur, final, via = got
        last = final[-1]
        if isinstance(cur, dict) or (
            isinstance(cur, list) and isinstance(last, int) and -len(cur) <= last < len(cur)
        ):
            cur[last] = value
        else:
            what = (
                f"a list of {len(cur)}"
                if isinstance(cur, list)
                else f"the value {cur!r}"
                if not isinstance(cur, str) or len(cur) < 60
                else "a string"
            )
            problems.append(
                Problem(
                    format_path(final),
                    f"override {text!r}: no such item: "
                    f"{format_path(final[:-1]) or 'the top level'} is {what}",
                    None,
                    file,
                )
            )
            continue
        applied.append(AppliedOverride(text, final, tuple(via)))
    if problems:
        raise ConfigError(problems)
    return applied
