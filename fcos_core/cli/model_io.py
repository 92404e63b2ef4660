"""Shared by ``fcos export`` and ``fcos predict``: build a model block and load weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError


def build_model(
    cfg: Any,
    block: str,
    checkpoint: str | None,
    default_ckpt: str | None,
    log: Any = print,
    allow_untrained: bool = False,
) -> Any:
    """Build ``block`` (``model`` or ``deploy_model``) in eval mode, with weights from
    ``checkpoint`` (or ``default_ckpt`` in ``ckpt_dir``). A missing checkpoint is an error
    naming it, unless ``allow_untrained`` (and no ``checkpoint`` was named): then the model
    keeps its random initial weights."""
    import torch

    from fcos_core.build import build

    if cfg.node(block) is None:
        raise FcosUserError(
            f"the config has no {block!r} block",
            hint="choose --block model or --block deploy_model",
        )
    model = build(cfg.values[block])
    path = (
        Path(checkpoint)
        if checkpoint
        else (Path(cfg.data["ckpt_dir"]) / default_ckpt if default_ckpt else None)
    )
    if path is not None and path.exists():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is the user's to fix
            raise FcosUserError(
                f"{path}: cannot read the checkpoint ({exc})",
                hint="pass a checkpoint written by fcos (float stage)",
            ) from None
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise FcosUserError(
                f"{path}: no state_dict in the checkpoint",
                hint="pass a float-stage checkpoint written by fcos",
            )
        result = model.load_state_dict(state, strict=False)
        # a deploy model has no targets/losses: only missing body keys matter
        missing = [k for k in result.missing_keys if k.startswith("body.")]
        if missing:
            stage = ckpt.get("stage") if isinstance(ckpt, dict) else None
            qstate = ckpt.get("qstate") if isinstance(ckpt, dict) else None
            hint = "use a float checkpoint of the same model configuration"
            if isinstance(stage, str) and qstate not in (None, "float"):
                # a quantized stage's weights: fcos predict runs those with --stage
                hint = (
                    f"this is a {stage} checkpoint ({qstate} model): `fcos predict` runs "
                    f"it with --stage {stage}; here use a float checkpoint"
                )
            raise FcosUserError(
                f"{path}: {len(missing)} weights of the model are not in the "
                f"checkpoint (first: {missing[:3]})",
                hint=hint,
            )
        log(f"weights: {path}")
    elif checkpoint:
        raise FcosUserError(
            f"checkpoint {checkpoint!r} does not exist",
            hint="pass the path of an existing float checkpoint to "
            "--checkpoint (or leave --checkpoint out and pass "
            "--allow-untrained to use random weights)",
        )
    elif allow_untrained:
        log(
            f"weights: none ({path or 'no checkpoint'} does not exist; --allow-untrained): the "
            "model is untrained"
        )
    else:
        where = (
            f"the default checkpoint {str(path)!r} does not exist"
            if path is not None
            else "no checkpoint was given"
        )
        raise FcosUserError(
            f"{where}, and an untrained model gives meaningless results",
            hint="train the float stage first (`fcos run CONFIG --stage float`) "
            "or pass --checkpoint PATH; pass --allow-untrained to use "
            "random weights on purpose (e.g. to test the pipeline)",
        )
    return model.eval()
