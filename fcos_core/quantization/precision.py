"""Mixed precision per layer: config rules that give named layers (or patterns) another
activation dtype than the target's default.

A rule in a converter's ``layer_precision`` list (Float2Calibration and Float2QAT must carry
the same list -- put it in ``vars`` and reference it from both)::

    layer_precision:
      - {layers: ["neck.*"], activation: int16}            # glob (fnmatch) on module names
      - {layers: ["re:head\\.cls_convs\\.[01]\\b.*"], activation: int16}   # regex (re: prefix)
      - {layers: [backbone.blocks.0.0.conv], activation: int8, weight: int8}

Layer names are the ``nn.Module`` qualified names the quantization report prints (the module
that produced the tensor, e.g. ``backbone.blocks.3.0.project.1``); a quantization point
answers to the module of the op that produced it and to the module of a ReLU fused after it.

Semantics, checked against the model before calibration or QAT starts
(:func:`resolve_layer_precision`):

* every pattern must match at least one quantizable layer -- else a user error that lists
  the nearest names;
* two rules that give one layer different dtypes are reported together (a conflict), as is a
  rule that contradicts a body output's dtype (the head's ``int16_output`` / ``int8_output``);
* ``weight``: only ``int8`` -- fcos's integer op set (and so every backend scored against it)
  has int8 per-channel weights; ``int16`` is refused with that reason;
* ``float`` is refused: the integer model has no float op, so no target fcos compiles for
  can run a float layer bit-exactly.

A layer's dtype is the dtype of its output activation: the next op reads it (an int16 input
to a conv costs NASH-E 4x the MAC slots). Ops that keep their input's scale (max-pool,
upsample, concat inputs) follow their input and are not layers of their own.

Torch-free: the config schema parses rules with :func:`parse_layer_precision`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from fcos_core.errors import FcosUserError

ACTIVATION_DTYPES = ("int8", "int16")
WEIGHT_DTYPES = ("int8",)
_KEYS = ("layers", "activation", "weight")


@attrs.frozen
class LayerPrecision:
    """One rule: ``layers`` (names, globs or ``re:`` regexes) get ``activation``/``weight``."""

    layers: tuple[str, ...]
    activation: str | None = None
    weight: str | None = None
    index: int = 0  # position in the config list, for messages

    def label(self) -> str:
        what = ", ".join(
            f"{k}: {v}" for k, v in (("activation", self.activation), ("weight", self.weight)) if v
        )
        return f"layer_precision[{self.index}] ({what})"

    def matches(self, pattern: str, name: str) -> bool:
        if pattern.startswith("re:"):
            return re.fullmatch(pattern[3:], name) is not None
        return fnmatch.fnmatchcase(name, pattern)


def _dtype(value: Any, allowed: Sequence[str], where: str, key: str) -> str | None:
    if value is None:
        return None
    if value == "float":
        raise FcosUserError(
            f"{where}.{key}: float layers are not supported: the integer model has no float op, "
            "so no fcos target can run them and be scored bit-exactly",
            hint="use int16 for a sensitive layer (docs/quantization.md, 'Mixed precision')",
        )
    if key == "weight" and value == "int16":
        raise FcosUserError(
            f"{where}.weight: int16 weights are not supported: the fcos integer op set (the "
            "reference every backend is checked against) has int8 per-channel weights",
            hint="keep weight: int8 and set activation: int16 for a sensitive layer",
        )
    if value not in allowed:
        raise FcosUserError(
            f"{where}.{key}: {value!r} is not a dtype fcos supports here",
            hint=f"use one of {', '.join(allowed)}",
        )
    return str(value)


def parse_layer_precision(rules: Any, where: str = "layer_precision") -> tuple[LayerPrecision, ...]:
    """Config list (of mappings) -> rules; a FcosUserError naming ``where[i]`` for bad ones."""
    if rules is None:
        return ()
    if isinstance(rules, LayerPrecision):
        return (rules,)
    if not isinstance(rules, (list, tuple)):
        raise FcosUserError(
            f"{where}: expected a list of rules, got {type(rules).__name__}",
            hint="layer_precision: [{layers: ['neck.*'], activation: int16}]",
        )
    out = []
    for i, rule in enumerate(rules):
        at = f"{where}[{i}]"
        if isinstance(rule, LayerPrecision):
            out.append(attrs.evolve(rule, index=i))
            continue
        if not isinstance(rule, Mapping):
            raise FcosUserError(
                f"{at}: expected a mapping, got {type(rule).__name__}",
                hint="{layers: ['neck.*'], activation: int16}",
            )
        unknown = sorted(set(rule) - set(_KEYS))
        if unknown:
            raise FcosUserError(
                f"{at}: unknown key(s) {unknown}", hint=f"a rule has {', '.join(_KEYS)}"
            )
        layers = rule.get("layers")
        if isinstance(layers, str):
            layers = [layers]
        if not layers or not all(isinstance(p, str) and p for p in layers):
            raise FcosUserError(
                f"{at}.layers: expected a non-empty list of layer names or patterns",
                hint="layers: ['neck.*'] (glob) or ['re:head\\..*']",
            )
        for p in layers:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as exc:
                    raise FcosUserError(
                        f"{at}.layers: {p!r} is not a valid regex ({exc})",
                        hint="re: patterns use Python's re syntax",
                    ) from exc
        act = _dtype(rule.get("activation"), ACTIVATION_DTYPES, at, "activation")
        weight = _dtype(rule.get("weight"), WEIGHT_DTYPES, at, "weight")
        if act is None and weight is None:
            raise FcosUserError(
                f"{at}: the rule sets neither activation nor weight",
                hint="add activation: int16 (or int8)",
            )
        out.append(LayerPrecision(layers=tuple(layers), activation=act, weight=weight, index=i))
    return tuple(out)


@attrs.frozen
class QuantPoint:
    """A quantizable layer as the rules see it: ``names`` it answers to (module paths of the
    producing op and of a fused ReLU, or the node name without one), its default dtype and
    whether a body output fixes its dtype (``fixed``: the dtype, or ``int32`` when the output
    is the unquantized accumulator)."""

    key: str  # unique id (the graph node whose output is quantized)
    names: tuple[str, ...]
    default: str
    fixed: str | None = None


def resolve_layer_precision(
    rules: Sequence[LayerPrecision], points: Sequence[QuantPoint], where: str = "layer_precision"
) -> dict[str, str]:
    """``{point.key: activation dtype}`` for every point a rule changes or confirms.

    Raises FcosUserError for a pattern that matches no quantizable layer (listing the nearest
    names), for conflicting rules on one layer, and for a rule against a body output's fixed
    dtype -- all problems at once.
    """
    problems: list[str] = []
    all_names = sorted({n for p in points for n in p.names})
    chosen: dict[str, tuple[str, LayerPrecision]] = {}
    for rule in rules:
        for pattern in rule.layers:
            hits = [p for p in points if any(rule.matches(pattern, n) for n in p.names)]
            if not hits:
                probe = pattern[3:] if pattern.startswith("re:") else pattern.replace("*", "")
                near = difflib.get_close_matches(probe, all_names, n=5, cutoff=0.3)
                if not near:
                    near = [
                        n
                        for n in all_names
                        if probe.split(".")[0] and n.startswith(probe.split(".")[0])
                    ][:5]
                problems.append(
                    f"{rule.label()}: {pattern!r} matches no quantizable layer"
                    + (f"; nearest: {', '.join(near)}" if near else "")
                )
                continue
            if rule.activation is None:
                continue
            for p in hits:
                if p.fixed is not None and p.fixed != rule.activation:
                    if not _is_glob(pattern):
                        problems.append(
                            f"{rule.label()}: {p.names[0]} is a body output whose dtype is "
                            f"{p.fixed} (the head's int8_output/int16_output decides it)"
                        )
                    continue  # a pattern sweeping over an output leaves the output alone
                prev = chosen.get(p.key)
                if prev is not None and prev[0] != rule.activation:
                    problems.append(
                        f"{p.names[0]}: conflicting rules {prev[1].label()} and {rule.label()}"
                    )
                    continue
                chosen[p.key] = (rule.activation, rule)
    if problems:
        raise FcosUserError(
            f"{where}: {len(problems)} problem(s) with the model's layers:\n  "
            + "\n  ".join(problems),
            hint="names are nn.Module paths as the quantization report prints them; globs "
            "(neck.*) or re:<regex>; one dtype per layer",
        )
    return {k: v[0] for k, v in chosen.items()}


def _is_glob(pattern: str) -> bool:
    return pattern.startswith("re:") or any(c in pattern for c in "*?[")


def layer_names(points: Iterable[QuantPoint]) -> list[str]:
    """One display name per point (the first it answers to), in graph order."""
    return [p.names[0] for p in points]


def rules_yaml(layers: Sequence[str], dtype: str = "int16", indent: int = 0) -> str:
    """A ``layer_precision`` YAML snippet giving exactly ``layers`` ``dtype`` activations."""
    pad = " " * indent
    if not layers:
        return f"{pad}layer_precision: []\n"
    lines = [f"{pad}layer_precision:"]
    for name in layers:
        lines.append(f"{pad}  - {{layers: [{_yaml_str(name)}], activation: {dtype}}}")
    return "\n".join(lines) + "\n"


def _yaml_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
