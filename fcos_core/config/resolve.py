"""From a YAML file to a validated config, reporting all problems before any work starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from fcos_core.config.loader import LineMap, load_yaml
from fcos_core.config.references import AppliedOverride, apply_overrides, resolve_references
from fcos_core.config.run_config import RunConfig
from fcos_core.config.validate import Node, Validator
from fcos_core.errors import ConfigError

if TYPE_CHECKING:
    from fcos_core.plugins import PluginHost


@attrs.define
class ResolvedConfig:
    """A config after overrides, references and validation."""

    file: str
    data: dict[str, Any]  # the resolved YAML, as plain data (what --resolved prints)
    values: dict[str, Any]  # top-level key -> checked value or Node
    lines: LineMap
    compile_backend: Any = None  # registry Entry of compile_cfg's march, when set
    compile_options: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None  # the document after overrides, before references
    overrides: list[AppliedOverride] = attrs.field(factory=list)  # where each override went

    def node(self, key: str) -> Node | None:
        value = self.values.get(key)
        return value if isinstance(value, Node) else None


def _broken_kinds(host: PluginHost) -> dict[str, list[str]]:
    from fcos_core.registry import KNOWN_PROVIDERS

    broken: dict[str, list[str]] = {}
    reasons = {
        p.distribution: p.error or p.status
        for p in host.plugins.values()
        if p.distribution and p.status != "loaded"
    }
    for (kind, _name), dist in KNOWN_PROVIDERS.items():
        if dist in reasons and dist not in broken.get(kind, []):
            broken.setdefault(kind, []).append(f"{dist}: {reasons[dist]}")
    return broken


def load_config(
    path: str | os.PathLike[str], host: PluginHost, overrides: Sequence[str] = ()
) -> ResolvedConfig:
    """Read, override, resolve and validate ``path``; raises :class:`ConfigError` with all
    problems at once."""
    raw, lines = load_yaml(path)
    applied = apply_overrides(raw, list(overrides), str(path))
    for record in applied:
        note = record.note()
        if note:  # an override that went through a reference: say where it landed
            print(f"note: {note}", file=sys.stderr)
    data = resolve_references(raw, lines)
    validator = Validator(host.registries, lines, _broken_kinds(host))
    hint = "; put your own values and reusable blocks under 'vars:'"
    values = validator.check_schema(RunConfig, data, (), "the config")
    # unknown top-level keys get an extra hint about vars:
    validator.problems = [
        attrs.evolve(p, message=p.message + hint)
        if p.path.count(".") == 0 and p.message.startswith("unknown key")
        else p
        for p in validator.problems
    ]
    resolved = ResolvedConfig(
        str(path),
        data,
        values or {},
        lines,
        raw=raw,  # resolving reads raw, never changes it
        overrides=applied,
    )
    compile_cfg = data.get("compile_cfg")
    if isinstance(compile_cfg, dict):
        march = compile_cfg.get("march", data.get("march"))
        if not isinstance(march, str):
            validator.problem(
                ("compile_cfg",),
                "compile_cfg needs 'march' (here or at the top level) naming a compile backend",
            )
        else:
            entry = validator.lookup("compile_backends", march, ("compile_cfg", "march"))
            # the deploy checks every backend's compile stage honours (allow_disagreement ...)
            # are fcos core's keys, not the backend's
            from fcos_core.compile.deploy_table import CHECK_KEYS, DeployCheckOptions

            validator.check_schema(
                DeployCheckOptions,
                {k: v for k, v in compile_cfg.items() if k in CHECK_KEYS},
                ("compile_cfg",),
                "compile_cfg",
            )
            if entry is not None:
                opts = validator.check_schema(
                    entry.schema,
                    compile_cfg,
                    ("compile_cfg",),
                    f"compile backend {march!r}",
                    skip=("march", *CHECK_KEYS),
                )
                resolved.compile_backend = entry
                resolved.compile_options = opts
    elif isinstance(data.get("march"), str):
        validator.lookup("compile_backends", data["march"], ("march",))
    if validator.problems:
        raise ConfigError(_merge_repeats(validator.problems))
    return resolved


def _merge_repeats(problems: list) -> list:
    """A block reused in several places fails the same way in each: report it once, listing
    the other places, so the root cause is not buried."""
    first: dict[tuple[str, str], int] = {}
    merged: list = []
    extra: dict[int, list[str]] = {}
    for p in problems:
        tail = p.path.rsplit(".", 1)[-1] if "." in p.path else p.path
        key = (tail, p.message)
        if key in first:
            extra.setdefault(first[key], []).append(p.path)
            continue
        first[key] = len(merged)
        merged.append(p)
    for i, paths in extra.items():
        more = ", ".join(paths[:4]) + (", ..." if len(paths) > 4 else "")
        merged[i] = attrs.evolve(
            merged[i],
            message=merged[i].message + f" (the same at {len(paths)} more place(s): {more})",
        )
    return merged
