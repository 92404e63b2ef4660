"""From a YAML file to a validated config, reporting all problems before any work starts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import attrs

from fcos_core.config.loader import LineMap, load_yaml
from fcos_core.config.references import apply_overrides, resolve_references
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

    def node(self, key: str) -> Node | None:
        value = self.values.get(key)
        return value if isinstance(value, Node) else None


def _broken_kinds(host: PluginHost) -> dict[str, list[str]]:
    from fcos_core.registry import KNOWN_PROVIDERS

    broken: dict[str, list[str]] = {}
    failed = {p.distribution for p in host.failed() if p.distribution}
    for (kind, _name), dist in KNOWN_PROVIDERS.items():
        if dist in failed:
            broken.setdefault(kind, []).append(dist)
    return broken


def load_config(path: str | os.PathLike[str], host: PluginHost,
                overrides: Sequence[str] = ()) -> ResolvedConfig:
    """Read, override, resolve and validate ``path``; raises :class:`ConfigError` with all
    problems at once."""
    raw, lines = load_yaml(path)
    apply_overrides(raw, list(overrides), str(path))
    data = resolve_references(raw, lines)
    validator = Validator(host.registries, lines, _broken_kinds(host))
    hint = "; put your own values and reusable blocks under 'vars:'"
    values = validator.check_schema(RunConfig, data, (), "the config")
    # unknown top-level keys get an extra hint about vars:
    validator.problems = [
        attrs.evolve(p, message=p.message + hint)
        if p.path.count(".") == 0 and p.message.startswith("unknown key") else p
        for p in validator.problems
    ]
    resolved = ResolvedConfig(str(path), data, values or {}, lines)
    compile_cfg = data.get("compile_cfg")
    if isinstance(compile_cfg, dict):
        march = compile_cfg.get("march", data.get("march"))
        if not isinstance(march, str):
            validator.problem(("compile_cfg",), "compile_cfg needs 'march' (here or at the top "
                                                "level) naming a compile backend")
        else:
            entry = validator.lookup("compile_backends", march, ("compile_cfg", "march"))
            if entry is not None:
                opts = validator.check_schema(entry.schema, compile_cfg, ("compile_cfg",),
                                              f"compile backend {march!r}", skip=("march",))
                resolved.compile_backend = entry
                resolved.compile_options = opts
    elif isinstance(data.get("march"), str):
        validator.lookup("compile_backends", data["march"], ("march",))
    if validator.problems:
        raise ConfigError(validator.problems)
    return resolved
