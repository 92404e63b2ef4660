"""Optimizers built from config, with per-parameter-group options.

The factories are called by the trainer as ``factory(model=..., **config_fields)`` (the config's
``params`` key holds the per-group options, so the model arrives as ``model``).

Per-group rule: ``params: {KEY: {option: value, ...}, ...}`` -- a parameter belongs to the group
of the first KEY (in config order) that equals its full name or is a dotted suffix of it
(``weight`` selects ``backbone.conv1.weight`` and ``bn.weight`` but not ``weights``;
``head.cls.bias`` selects exactly that). Every other parameter gets the optimizer's top-level
options. Options must be ones the optimizer knows (``lr``, ``weight_decay``, ``momentum``...),
and a KEY that selects no parameter is an error (usually a typo). Parameters with
``requires_grad = False`` are left out.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch

_ALLOWED = {
    torch.optim.SGD: {"lr", "momentum", "dampening", "weight_decay", "nesterov"},
    torch.optim.Adam: {"lr", "betas", "eps", "weight_decay", "amsgrad"},
    torch.optim.AdamW: {"lr", "betas", "eps", "weight_decay", "amsgrad"},
}


def _selects(key: str, name: str) -> bool:
    return name == key or name.endswith("." + key)


def param_groups(
    model: Any, params: dict[str, dict[str, Any]] | None, allowed: set[str]
) -> list[dict[str, Any]]:
    """Parameter groups of ``model`` for the per-group ``params`` options (see module doc)."""
    params = dict(params or {})
    if not hasattr(model, "named_parameters"):
        if params:
            raise ValueError(
                "per-group 'params' options need a model (names to match), not a list of tensors"
            )
        return [{"params": [p for p in model if p.requires_grad]}]
    for key, opts in params.items():
        if not isinstance(opts, dict):
            raise ValueError(
                f"params[{key!r}] must be a mapping of options, e.g. {{weight_decay: 4e-5}}"
            )
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise ValueError(
                f"params[{key!r}] has unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(allowed))}"
            )
    groups: dict[str, list[torch.nn.Parameter]] = {k: [] for k in params}
    default: list[torch.nn.Parameter] = []
    names = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names.append(name)
        for key in params:
            if _selects(key, name):
                groups[key].append(p)
                break
        else:
            default.append(p)
    empty = [k for k, ps in groups.items() if not ps]
    if empty:
        sample = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        near = [
            f"{k!r} -> {m[0]!r}"
            for k in empty
            if (m := difflib.get_close_matches(k, _suffixes(names), n=1, cutoff=0.75))
        ]
        raise ValueError(
            f"params key(s) {', '.join(map(repr, empty))} select no parameter; a "
            f"key must be a parameter name or its dotted suffix (names look like: "
            f"{sample})" + (f"; did you mean {', '.join(near)}?" if near else "")
        )
    out = [{"params": ps, **params[k], "group": k} for k, ps in groups.items()]
    if default:
        out.append({"params": default, "group": "default"})
    return out


def _suffixes(names: list[str]) -> list[str]:
    """Every key that would select something: each name's dotted suffixes (``weight``,
    ``conv.weight``, ... the name itself), shortest first."""
    out: dict[str, None] = {}
    split = [name.split(".") for name in names]
    for depth in range(1, max((len(p) for p in split), default=0) + 1):
        for parts in split:
            if len(parts) >= depth:
                out[".".join(parts[-depth:])] = None
    return list(out)


def _check_common(lr: float, weight_decay: float) -> None:
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def _betas(betas: Iterable[float]) -> tuple[float, float]:
    values = tuple(float(b) for b in betas)
    if len(values) != 2:
        raise ValueError(f"betas must be two numbers, got {list(values)}")
    return values[0], values[1]


def SGD(
    model: Any,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    params: dict[str, dict[str, Any]] | None = None,
) -> torch.optim.SGD:
    """``torch.optim.SGD`` over ``model``'s parameter groups."""
    _check_common(lr, weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            "nesterov: true needs momentum > 0 and dampening: 0 "
            f"(got momentum {momentum}, dampening {dampening})"
        )
    groups = param_groups(model, params, _ALLOWED[torch.optim.SGD])
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )


def Adam(
    model: Any,
    lr: float = 1e-3,
    betas: Iterable[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    params: dict[str, dict[str, Any]] | None = None,
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``model``'s parameter groups."""
    _check_common(lr, weight_decay)
    groups = param_groups(model, params, _ALLOWED[torch.optim.Adam])
    return torch.optim.Adam(
        groups, lr=lr, betas=_betas(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
    )


def AdamW(
    model: Any,
    lr: float = 1e-3,
    betas: Iterable[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    params: dict[str, dict[str, Any]] | None = None,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``model``'s parameter groups."""
    _check_common(lr, weight_decay)
    groups = param_groups(model, params, _ALLOWED[torch.optim.AdamW])
    return torch.optim.AdamW(
        groups, lr=lr, betas=_betas(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
    )
