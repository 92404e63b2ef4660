"""The FCOS detector (Tian et al., 2019) assembled from built components.

Modes (see docs/interfaces.md "Detector"):

* ``model(img_tensor)`` (any mode, the deploy form): ``model.body(img)``, the flat tuple
  ``(cls_0.., box_0.., ctr_0..)``; passed through ``post_process`` when that is ``for_compile``.
* ``model.train(); model(batch)``: ``{loss_cls.loss_name: .., loss_reg.loss_name: ..,
  loss_centerness.loss_name: ..}`` scalar losses.
* ``model.eval(); model(batch)``: per image ``{"boxes" [N, 4] xyxy in network-input pixels,
  "scores" [N], "labels" [N]}``.

Loss normalisation (FCOS/mmdet): classification focal loss summed over non-ignored points and
divided by the number of positives; GIoU loss on decoded boxes of positives weighted by their
geometric centerness and divided by the sum of those weights; centerness BCE against the IoU
target, divided by the number of positives. Counts are per process (not all-reduced across
distributed ranks).

The loss dict is a :class:`~fcos_core.models.loss_dict.LossDict`: with a sigmoid centerness loss
its ``monitor`` holds ``<centerness loss_name>_floor``, the least value the centerness loss can
reach on the step's targets (see :meth:`FCOS.centerness_floor`), logged but not optimised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fcos_core.models.body import FCOSBody
from fcos_core.models.layout import flatten_outputs
from fcos_core.models.loss_dict import LossDict
from fcos_core.models.points import distances_to_boxes


def _check_equal(what_a: str, a: Any, what_b: str, b: Any, fix: str) -> None:
    if a != b:
        raise ValueError(f"{what_a}={a} does not match {what_b}={b}; {fix}")


class FCOS(nn.Module):
    """FCOS detector.

    Args:
        backbone: built backbone (exposes ``out_strides``/``out_channels``).
        neck: built neck (its ``out_strides``, when exposed, must equal ``head.in_strides``).
        head: built ``FCOSHead`` (``num_classes``, ``in_strides``, ``out_strides``,
            ``upscale_bbox_pred``).
        targets: target assigner (``DynamicFcosTarget``); None for a deploy model.
        post_process: ``FCOSMultiStrideFilter``; None: eval needs none (raw outputs only).
        loss_cls, loss_centerness, loss_reg: loss modules (reduction ``mean``); all three or
            none, together with ``targets``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        targets: nn.Module | None = None,
        post_process: nn.Module | None = None,
        loss_cls: nn.Module | None = None,
        loss_centerness: nn.Module | None = None,
        loss_reg: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name in ("num_classes", "out_strides", "in_strides"):
            if not hasattr(head, name):
                raise ValueError(
                    f"head {type(head).__name__} has no '{name}'; FCOS needs an "
                    "FCOS-style head (e.g. type: FCOSHead)"
                )
        self._check_body(backbone, neck, head)
        self.strides: list[int] = list(head.out_strides)
        self.num_classes: int = int(head.num_classes)
        # kept here because quantization may replace `body` by a graph without the head object
        self.bbox_upscaled: bool = bool(getattr(head, "upscale_bbox_pred", False))
        self.body = FCOSBody(backbone, neck, head)

        losses = {"loss_cls": loss_cls, "loss_centerness": loss_centerness, "loss_reg": loss_reg}
        given = [k for k, v in losses.items() if v is not None]
        if given and (len(given) != 3 or targets is None):
            missing = [k for k, v in losses.items() if v is None]
            raise ValueError(
                f"a training FCOS needs targets and all of loss_cls, "
                f"loss_centerness, loss_reg; missing: "
                f"{', '.join(missing + ([] if targets is not None else ['targets']))}"
                " (a deploy model sets none of them)"
            )
        if targets is not None and not given:
            raise ValueError(
                "targets is set but no losses are: add loss_cls, loss_centerness "
                "and loss_reg, or drop targets for a deploy model"
            )
        if targets is not None:
            self._check_losses(losses, head)
            t_strides = list(getattr(targets, "strides", self.strides))
            _check_equal(
                "targets.strides",
                t_strides,
                "head.out_strides",
                self.strides,
                "use the same strides in both blocks",
            )
            t_classes = getattr(targets, "cls_out_channels", self.num_classes)
            _check_equal(
                "targets.cls_out_channels",
                t_classes,
                "head.num_classes",
                self.num_classes,
                "both count the object classes (no background)",
            )
        if post_process is not None and hasattr(post_process, "strides"):
            _check_equal(
                "post_process.strides",
                list(post_process.strides),
                "head.out_strides",
                self.strides,
                "use the same strides in both blocks",
            )
        self.targets = targets
        self.post_process = post_process
        self.loss_cls = loss_cls
        self.loss_centerness = loss_centerness
        self.loss_reg = loss_reg

    @staticmethod
    def _check_body(backbone: nn.Module, neck: nn.Module, head: nn.Module) -> None:
        b_strides = getattr(backbone, "out_strides", None)
        b_channels = getattr(backbone, "out_channels", None)
        check_inputs = getattr(neck, "check_inputs", None)
        if callable(check_inputs) and b_strides is not None and b_channels is not None:
            # the neck knows best what it accepts (strides and channels), e.g. BiFPN
            check_inputs(list(b_strides), list(b_channels))
        n_in = getattr(neck, "in_strides", None)
        if b_strides is not None and n_in is not None:
            missing = [s for s in n_in if s not in list(b_strides)]
            if missing:
                raise ValueError(
                    f"neck.in_strides={list(n_in)} has strides {missing} that "
                    f"backbone.out_strides={list(b_strides)} does not give"
                )
        n_out = getattr(neck, "out_strides", None)
        if n_out is not None:
            _check_equal(
                "head.in_strides",
                list(head.in_strides),
                "neck.out_strides",
                list(n_out),
                "the head takes the neck's outputs, stride by stride",
            )
            n_ch = getattr(neck, "out_channels", None)
            s2c = getattr(head, "stride2channels", None)
            if n_ch is not None and s2c is not None:
                per = [int(n_ch)] * len(n_out) if isinstance(n_ch, int) else list(n_ch)
                want = [s2c.get(s) for s in n_out]
                _check_equal(
                    "head.stride2channels",
                    dict(zip(n_out, want)),
                    "neck out_channels per stride",
                    dict(zip(n_out, per)),
                    "set stride2channels to the neck's out_channels",
                )

    def _check_losses(self, losses: Mapping[str, nn.Module | None], head: nn.Module) -> None:
        names: dict[str, str] = {}
        for field, loss in losses.items():
            assert loss is not None
            red = getattr(loss, "reduction", "mean")
            if red != "mean":
                raise ValueError(
                    f"{field}.reduction must be 'mean' in the model (it is "
                    f"normalised by the number of positives), got {red!r}"
                )
            name = getattr(loss, "loss_name", field)
            if name in names:
                raise ValueError(
                    f"{field} and {names[name]} have the same loss_name {name!r}; "
                    "give each loss its own name"
                )
            names[name] = field
        n = getattr(losses["loss_cls"], "num_classes", None)
        if n is not None:
            _check_equal(
                "loss_cls.num_classes",
                n,
                "head.num_classes + 1",
                self.num_classes + 1,
                "the focal loss counts the background too",
            )

    # -- convenience accessors (the live modules sit in `body`) ---------------------------------

    @property
    def backbone(self) -> nn.Module:
        return self.body.backbone

    @property
    def neck(self) -> nn.Module:
        return self.body.neck

    @property
    def head(self) -> nn.Module:
        return self.body.head

    # -- forward ------------------------------------------------------------------------------

    def forward(self, batch: Tensor | Mapping[str, Any]) -> Any:
        """See the module docstring; ``batch`` is an image tensor or a dict batch."""
        if isinstance(batch, Tensor):
            outputs = self.body(batch)
            if self.post_process is not None and getattr(self.post_process, "for_compile", False):
                return self.post_process(outputs)
            return outputs
        img = batch["img"]
        outputs = self.body(img)
        if self.training:
            if self.targets is None:
                raise RuntimeError(
                    "this FCOS has no targets/losses (a deploy model) and cannot "
                    "train; use the 'model' block"
                )
            return self.compute_losses(outputs, batch["gt_bboxes"], batch["gt_classes"])
        if self.post_process is None:
            raise RuntimeError(
                "this FCOS has no post_process, so it cannot return detections; "
                "add a post_process block (e.g. FCOSMultiStrideFilter)"
            )
        return self.post_process.detect(
            outputs, (int(img.shape[-2]), int(img.shape[-1])), bbox_upscaled=self.bbox_upscaled
        )

    def compute_losses(
        self, outputs: Sequence[Tensor], gt_bboxes: Sequence[Tensor], gt_classes: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """Named scalar losses from the body's outputs (training mode, stride units).

        Args:
            outputs: flat tuple ``(cls_0.., box_0.., ctr_0..)``.
            gt_bboxes: per image ``[N_b, 4]`` xyxy pixels.
            gt_classes: per image ``[N_b]`` labels, negative = ignore region.
        """
        assert self.targets is not None and self.loss_cls is not None
        assert self.loss_reg is not None and self.loss_centerness is not None
        t = self.targets(outputs, gt_bboxes, gt_classes)
        flat = flatten_outputs(outputs, len(self.strides))
        num_classes = flat.cls.shape[-1]
        pos = t["pos_mask"]
        num_pos = pos.sum().clamp(min=1).to(flat.cls.dtype)
        loss_cls = self.loss_cls(
            flat.cls.reshape(-1, num_classes),
            t["labels"].reshape(-1),
            weight=t["label_weights"].reshape(-1),
            avg_factor=num_pos,
        )
        # decode only the positives: [Npos, 4] pixels
        bidx, pidx = torch.nonzero(pos, as_tuple=True)
        dist = flat.box[bidx, pidx] * t["point_strides"][pidx, None]
        pred_boxes = distances_to_boxes(t["points"][pidx], dist)
        weights = t["bbox_weights"][bidx, pidx]
        loss_reg = self.loss_reg(
            pred_boxes,
            t["bbox_targets"][bidx, pidx],
            weight=weights,
            avg_factor=weights.sum().clamp(min=1e-6),
        )
        ctr_targets = t["centerness_targets"][bidx, pidx]
        loss_ctr = self.loss_centerness(flat.ctr[bidx, pidx], ctr_targets, avg_factor=num_pos)
        ctr_name = self.loss_centerness.loss_name
        losses = LossDict(
            {
                self.loss_cls.loss_name: loss_cls,
                self.loss_reg.loss_name: loss_reg,
                ctr_name: loss_ctr,
            }
        )
        if getattr(self.loss_centerness, "use_sigmoid", False):
            losses.monitor[f"{ctr_name}_floor"] = self.centerness_floor(ctr_targets, num_pos)
        return losses

    @torch.no_grad()
    def centerness_floor(self, targets: Tensor, num_pos: Tensor) -> Tensor:
        """The least centerness loss any prediction reaches on these soft targets.

        Binary cross-entropy against a target ``t`` is smallest when the prediction equals
        ``t``, where it is the binary entropy ``H(t) = -t ln t - (1-t) ln(1-t)``; so the loss
        (``loss_weight * sum(BCE) / num_pos``) cannot go below
        ``loss_weight * sum(H(t)) / num_pos``. Logged as ``<centerness loss_name>_floor``
        (a :class:`~fcos_core.models.loss_dict.LossDict` ``monitor`` value, never
        back-propagated): the gap ``centerness - centerness_floor`` is what training can still
        reduce.
        """
        t = targets.detach().float().clamp(0.0, 1.0)
        entropy = -(torch.xlogy(t, t) + torch.xlogy(1.0 - t, 1.0 - t))
        weight = float(getattr(self.loss_centerness, "loss_weight", 1.0))
        return weight * entropy.sum() / num_pos.detach().float()
