"""Checks of every stage's optimizer before the first stage starts.

An optimizer is built when its stage starts, possibly hours into ``fcos run --stage all``; a
typo in a per-group ``params`` key (``weigth``) would only fail then. So:

* :func:`param_key_typos` (torch-free, for ``fcos check``): a ``params`` key whose last part
  is a near miss of ``weight`` / ``bias`` -- the parameter names of every model fcos and its
  bundled plugins ship -- is reported with a did-you-mean. Other keys cannot be judged without
  the model.
* :func:`check_stage_optimizers` (``fcos run``, before training): builds each stage's model on
  the CPU (about a second) and its optimizer over it, exactly as the stage will, so every
  ``params`` key is matched against the real parameter names and every option is checked. The
  model is the stage's model before its converters (a converter such as ``Float2QAT`` folds
  BatchNorm into the convolutions, so a key selecting only BatchNorm parameters can still fail
  when that stage starts).

Importing this module does not import torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from fcos_core.config.loader import format_path
from fcos_core.config.validate import Node
from fcos_core.errors import ConfigError, Problem

#: the last part of every parameter name in fcos's models (torch's weight/bias convention)
KNOWN_PARAM_LEAVES = ("weight", "bias")


def _optimizer_blocks(cfg: Any, stages: Iterable[str]) -> list[tuple[str, Node, Node]]:
    """(stage, model node, optimizer node) of each stage that builds an optimizer."""
    out = []
    for stage in stages:
        node = cfg.node(f"{stage}_trainer")
        if node is None:
            continue
        opt, model = node.kwargs.get("optimizer"), node.kwargs.get("model")
        epochs = node.kwargs.get("num_epochs")
        if not isinstance(opt, Node) or not isinstance(model, Node):
            continue
        if isinstance(epochs, int) and epochs == 0:  # the trainer builds no optimizer
            continue
        out.append((stage, model, opt))
    return out


def param_key_typos(cfg: Any, stages: Iterable[str]) -> list[Problem]:
    """Torch-free: ``params`` keys of the stages' optimizers that look like typos of a
    parameter name (see the module docstring)."""
    problems = []
    for _stage, _model, opt in _optimizer_blocks(cfg, stages):
        params = opt.kwargs.get("params")
        if not isinstance(params, dict):
            continue
        for key in params:
            leaf = str(key).rsplit(".", 1)[-1]
            if leaf in KNOWN_PARAM_LEAVES:
                continue
            near = difflib.get_close_matches(leaf, KNOWN_PARAM_LEAVES, n=1, cutoff=0.7)
            if not near:
                continue
            fixed = str(key)[: len(str(key)) - len(leaf)] + near[0]
            path = (*opt.path, "params", key)
            problems.append(
                Problem(
                    format_path(path),
                    f"params key {key!r} selects no parameter: parameter names end in "
                    f"{' or '.join(map(repr, KNOWN_PARAM_LEAVES))}; did you mean {fixed!r}? (a key "
                    "is a parameter name or its dotted suffix, e.g. weight, bn.bias, "
                    "head.cls.bias)",
                    cfg.lines.line(path),
                    cfg.file,
                )
            )
    return problems


def check_stage_optimizers(cfg: Any, stages: Iterable[str]) -> None:
    """Build every listed stage's model (CPU) and optimizer over it; raise
    :class:`ConfigError` with every problem found, naming each optimizer block."""
    from fcos_core.build import build

    problems: list[Problem] = []
    models: dict[int, Any] = {}
    for _stage, model_node, opt in _optimizer_blocks(cfg, stages):
        try:
            key = id(model_node)
            if key not in models:
                models[key] = build(model_node)
            build(opt, model=models[key])
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(problems)
