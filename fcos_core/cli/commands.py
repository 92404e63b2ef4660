"""Bodies of the built-in subcommands. Heavy imports happen inside the functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fcos_core.config.run_config import STAGES
from fcos_core.errors import ConfigError, FcosUserError
from fcos_core.plugins import PluginHost


def _factories(host: PluginHost, kind: str, names: list[str]) -> dict[str, str]:
    """name -> ``module:attr`` of each component's factory (read from the registry entry, so
    nothing is imported)."""
    return {n: host.registries[kind].lookup(n).factory_ref for n in names}


def plugins_command(args: argparse.Namespace, host: PluginHost) -> int:
    rows = sorted(
        (p for p in host.plugins.values() if args.all or not p.builtin),
        key=lambda p: (not p.builtin, p.distribution or "", p.name),
    )
    verbose = bool(getattr(args, "verbose", False))
    if args.json:
        out: list[dict[str, Any]] = [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "builtin": p.builtin,
                "status": p.status,
                "error": p.error,
                "components": p.components,
            }
            for p in rows
        ]
        if verbose:
            for row, p in zip(out, rows):
                row["factories"] = {
                    kind: _factories(host, kind, names)
                    for kind, names in sorted(p.components.items())
                }
        print(json.dumps(out, indent=2))
        return 0
    if not rows:
        print("no plugins installed (fcos-core's built-ins are listed with --all)")
    for p in rows:
        head = f"{p.distribution or p.name} {p.version or ''}".strip()
        print(f"{head}  [{p.status}]" + (f"  plugin: {p.name}" if p.distribution else ""))
        if p.error:
            skip = p.distribution or p.name
            print(f"    {p.error}")
            if p.status == "failed":
                print(f"    skip it with FCOS_DISABLE_PLUGINS={skip}")
        for kind, names in sorted(p.components.items()):
            if not verbose:
                print(f"    {kind}: {', '.join(names)}")
                continue
            print(f"    {kind}:")
            refs = _factories(host, kind, names)
            width = max(len(n) for n in names)
            for name in names:
                print(f"      {name:<{width}}  {refs[name]}")
    return 0


def check_command(args: argparse.Namespace, host: PluginHost) -> int:
    from fcos_core.config import load_config

    cfg = load_config(args.config, host, args.overrides)
    for line in host.failure_report():
        print(f"warning: {line}", file=sys.stderr)
    from fcos_core.engine.stage_checks import param_key_typos

    typos = param_key_typos(cfg, STAGES)  # torch-free; `fcos run` matches the real names
    if typos:
        raise ConfigError(typos)
    stages = [s for s in STAGES if _stage_key(s) in cfg.data and cfg.data[_stage_key(s)]]
    print(f"{args.config}: OK ({len(stages)} stage(s): {', '.join(stages) or 'none'})")
    if getattr(args, "model", False):
        return check_model(cfg)
    return 0


def check_model(cfg: Any) -> int:
    """Build ``deploy_model`` (float, untrained: the structure is what matters) and list every
    layer the compile backend of ``march`` cannot compile. Exit 2 when there is one."""
    from fcos_core.build import build
    from fcos_core.engine.compile_stage import backend_entry

    entry = backend_entry(cfg)
    if cfg.node("deploy_model") is None:
        raise FcosUserError(
            "--model checks the deploy_model block, which this config lacks",
            hint="add deploy_model (the model as it is compiled)",
        )
    import torch

    model = build(cfg.values["deploy_model"]).eval()
    shapes = cfg.data.get("deploy_inputs") or {"img": [1, 3, 512, 512]}
    inputs = {k: torch.zeros(tuple(v)) for k, v in shapes.items()}
    issues = list(entry.load()().check(model, inputs))
    if not issues:
        print(f"deploy_model: every layer can compile for {entry.name}")
        return 0
    print(f"deploy_model: {len(issues)} layer(s) cannot compile for {entry.name}:", file=sys.stderr)
    for issue in issues:
        print(f"  - {issue.render()}", file=sys.stderr)
    return 2


def _stage_key(stage: str) -> str:
    return "compile_cfg" if stage == "compile" else f"{stage}_trainer"


def config_command(args: argparse.Namespace, host: PluginHost) -> int:
    import yaml

    from fcos_core.config import load_config
    from fcos_core.config.loader import load_yaml
    from fcos_core.config.references import apply_overrides

    if args.resolved:
        from fcos_core.config.origins import dump_with_origins, value_origins

        cfg = load_config(args.config, host, args.overrides)
        # each value followed by where it came from: a line, an override, a ${...} reference
        origins = value_origins(cfg.raw or {}, cfg.lines, cfg.overrides)
        print(dump_with_origins(cfg.data, origins), end="")
        return 0
    data, _ = load_yaml(args.config)
    for record in apply_overrides(data, args.overrides, args.config):
        if record.note():
            print(f"note: {record.note()}", file=sys.stderr)
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100), end="")
    return 0


def parse_stages(arg: str | None) -> list[str]:
    """``--stage`` (or ``$FCOS_STAGE``) -> the stages to run, in pipeline order."""
    stage = arg or os.environ.get("FCOS_STAGE") or "all"
    if stage == "all":
        return list(STAGES)
    wanted = [s.strip() for s in stage.split(",") if s.strip()]
    for s in wanted:
        if s not in STAGES:
            import difflib

            near = difflib.get_close_matches(s, STAGES, n=1)
            raise FcosUserError(
                f"unknown stage {s!r}; stages are {', '.join(STAGES)}, or all",
                hint=f"did you mean {near[0]!r}?" if near else None,
            )
    return [s for s in STAGES if s in wanted]


def run_command(args: argparse.Namespace, host: PluginHost) -> int:
    from fcos_core.config import load_config

    stages = parse_stages(args.stage)
    if args.resume and getattr(args, "overwrite", False):
        raise FcosUserError(
            "--resume and --overwrite exclude each other",
            hint="--resume continues from the existing checkpoints; "
            "--overwrite trains again and replaces them",
        )
    cfg = load_config(args.config, host, args.overrides)
    # before torch allocates anything: tensors of 2 MB and more on transparent huge pages, so
    # a training step's large activations fault in 512x fewer pages (batch 4 on the seed's
    # backbone: 100 MB tensors, see docs/benchmarks.md); this process only, never exported
    from fcos_core.engine import hugepages

    hugepages.setup(getattr(args, "thp", None))
    # every stage's optimizer against its model now, not when the stage starts hours later
    from fcos_core.engine.stage_checks import check_stage_optimizers

    check_stage_optimizers(cfg, stages)
    if args.nproc_per_node and args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        from fcos_core.engine.launch import launch_with_torchrun

        return launch_with_torchrun(args)
    from fcos_core.engine.pipeline import run_pipeline

    return run_pipeline(
        cfg,
        host,
        stages,
        run_dir=args.run_dir,
        resume=args.resume,
        overwrite=getattr(args, "overwrite", False),
    )
