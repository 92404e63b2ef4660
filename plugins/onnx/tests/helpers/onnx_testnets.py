"""Small FCOS detectors, synthetic detection data and the public quantization flow, for the
fcos-plugin-onnx tests.

The backbone is the testing kit's stand-in (fcos_core.testing.standins). The neck here is
not a generic stand-in: it uses every integer op kind the exporter translates: conv (dense,
depthwise in the head, stride 1/2), ReLU fused into convs and adds, add, nearest upsampling by
a factor and to a size, concat (shared scale) and max-pooling. Everything is built through
fcos's public modules only, as a third-party plugin would.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from fcos_core.convert_context import ConvertContext
from fcos_core.hooks import hookimpl
from fcos_core.models.dynamic_target import DynamicFcosTarget
from fcos_core.models.fcos import FCOS
from fcos_core.models.head import FCOSHead
from fcos_core.models.losses.cross_entropy import CrossEntropyLoss
from fcos_core.models.losses.focal import FocalLoss
from fcos_core.models.losses.giou import GIoULoss
from fcos_core.models.post_process import FCOSMultiStrideFilter
from fcos_core.quantization.converters import Float2QAT, QAT2Quantize, freeze_observers
from fcos_core.schema import arg
from fcos_core.testing.detection_data import synthetic_batch  # noqa: F401 (nets.synthetic_batch)
from fcos_core.testing.standins import TinyBackbone

SIZE = 64
STRIDES = [8, 16, 32]


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def stand_in_backbone(width: int = 16) -> TinyBackbone:
    """The testing kit's backbone with four stride-2 stages of ``width / 2, width, 2 width,
    2 width`` channels: ``img [B, 3, H, W]`` -> features at strides 8 and 16, ``2 width``
    channels each."""
    return TinyBackbone((8, 16), channels=(width // 2, width, 2 * width, 2 * width))


class StandInNeck(nn.Module):
    """FPN-like: top-down add (x2 upsample), concat with a size-upsampled copy, max-pooled P32."""

    def __init__(self, in_channels: Sequence[int] = (32, 32), out_channels: int = 32) -> None:
        super().__init__()
        c = out_channels
        self.lat8 = nn.Sequential(nn.Conv2d(in_channels[0], c, 1, bias=False), nn.BatchNorm2d(c))
        self.lat16 = nn.Sequential(nn.Conv2d(in_channels[1], c, 1, bias=False), nn.BatchNorm2d(c))
        self.fuse = _cbr(2 * c, c, 1)
        self.in_strides = [8, 16]
        self.out_strides = list(STRIDES)
        self.out_channels = c

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        a, b = feats
        p16 = self.lat16(b)
        p8 = F.relu(self.lat8(a) + F.interpolate(p16, scale_factor=2.0, mode="nearest"))
        up = F.interpolate(p16, size=(int(p8.shape[-2]), int(p8.shape[-1])), mode="nearest")
        p8 = self.fuse(torch.cat([p8, up], 1))
        return [p8, p16, F.max_pool2d(p16, 2, 2)]


def make_fcos(
    seed: int = 0,
    num_classes: int = 3,
    train: bool = True,
    for_compile: bool = False,
    dequant_output: bool = True,
    int16_output: bool = True,
    int8_output: bool = False,
    act: str = "relu",
) -> FCOS:
    """The test detector; ``act="silu"`` puts an op without integer form in the backbone."""
    torch.manual_seed(seed)
    backbone = stand_in_backbone()
    if act == "silu":
        backbone.stages[3][2] = nn.SiLU()  # the stride-16 stage's activation
    neck = StandInNeck(backbone.out_channels)
    head = FCOSHead(
        num_classes=num_classes,
        in_strides=STRIDES,
        out_strides=STRIDES,
        stride2channels=dict.fromkeys(STRIDES, 32),
        feat_channels=32,
        stacked_convs=2,
        int8_output=int8_output,
        int16_output=int16_output,
        dequant_output=dequant_output,
    )
    post = FCOSMultiStrideFilter(strides=STRIDES, for_compile=for_compile, max_shape=(SIZE, SIZE))
    if not train:
        return FCOS(backbone, neck, head, post_process=post)
    targets = DynamicFcosTarget(
        strides=STRIDES,
        cls_out_channels=num_classes,
        background_label=num_classes,
        topK=10,
        loss_cls=FocalLoss(num_classes=num_classes + 1, reduction="none"),
        loss_reg=GIoULoss(loss_weight=2.0, reduction="none"),
    )
    return FCOS(
        backbone,
        neck,
        head,
        targets=targets,
        post_process=post,
        loss_cls=FocalLoss(num_classes=num_classes + 1),
        loss_centerness=CrossEntropyLoss(use_sigmoid=True, loss_name="centerness"),
        loss_reg=GIoULoss(),
    )


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics, so an untrained model has varied activations."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def images(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """Normalised images in [-1, 1) as Normalize(mean=128, std=128) produces."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def scenes(n: int, seed: int, height: int = SIZE, width: int | None = None) -> torch.Tensor:
    """Photo-like normalised images ``[n, 3, height, width]``: a smooth lit background
    (low-frequency gradients), textured rectangles and discs of several colours and sizes,
    soft edges and sensor noise, as 8-bit pixels normalised like Normalize(128, 128).

    Unlike uniform noise, neighbouring pixels correlate and large flat and strongly textured
    regions alternate, so the activations cover the ranges real images produce."""
    import numpy as np

    width = height if width is None else width
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / max(height - 1, 1), xx / max(width - 1, 1)
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        img = np.empty((3, height, width), np.float32)
        base = g.uniform(60, 190, 3)
        for c in range(3):  # a sky-to-ground gradient and a broad light blob
            fy, fx = g.uniform(0.5, 2.5, 2)
            img[c] = (
                base[c]
                + 40 * (yy - 0.5) * g.choice([-1, 1])
                + 25 * np.sin(2 * np.pi * (fy * yy + fx * xx) + g.uniform(0, 6.3))
            )
        for _ in range(int(g.integers(4, 12))):
            h = int(g.integers(max(4, height // 16), max(5, height // 2)))
            w = int(g.integers(max(4, width // 16), max(5, width // 2)))
            y0, x0 = int(g.integers(0, height - h)), int(g.integers(0, width - w))
            colour = g.uniform(0, 255, 3).astype(np.float32)
            if g.random() < 0.5:
                mask = np.zeros((height, width), np.float32)
                mask[y0 : y0 + h, x0 : x0 + w] = 1.0
            else:
                cy, cx = (y0 + h / 2) / height, (x0 + w / 2) / width
                r2 = ((yy - cy) * height / h) ** 2 + ((xx - cx) * width / w) ** 2
                mask = np.clip(4.0 * (1.0 - 4.0 * r2), 0.0, 1.0)  # a disc with a soft rim
            stripes = 20 * np.sin(2 * np.pi * g.uniform(2, 12) * (xx + yy)) * (g.random() < 0.4)
            img = img * (1 - mask) + (colour[:, None, None] + stripes) * mask
        img += g.normal(0.0, 3.0, img.shape)
        out[i] = np.clip(np.round(img), 0, 255)
    return torch.from_numpy(out).sub_(128.0).div_(128.0)


def train(model: FCOS, batch: dict[str, Any], steps: int = 150, lr: float = 5e-3) -> FCOS:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def quantize(
    model: nn.Module, calib: Sequence[torch.Tensor], backend: Any = None, size: int = SIZE
) -> nn.Module:
    """Float2QAT -> a few calibration batches -> freeze -> QAT2Quantize (the public flow)."""
    ctx = ConvertContext(example_inputs={"img": (1, 3, size, size)}, backend=backend)
    qat = Float2QAT()(copy.deepcopy(model).eval(), ctx)
    # a QAT model's ranges move only in training mode (evaluating it never changes it);
    # BN is folded, so training mode changes nothing else here
    qat.body.train()
    with torch.no_grad():
        for x in calib:
            qat(x)
    qat.eval()
    freeze_observers(qat)
    return QAT2Quantize()(qat, ctx).eval()


def quantize_for_size(
    model: nn.Module,
    calib: Sequence[torch.Tensor],
    calib_size: int,
    deploy_hw: tuple[int, int],
    backend: Any = None,
) -> nn.Module:
    """The quantized model of ``model`` calibrated at ``calib_size`` and rebuilt for a
    ``deploy_hw`` input, as the pipeline does when a config's input size changes after QAT:
    a QAT model at the new size loads the calibrated QAT state (scales included), then
    QAT2Quantize traces it at that size."""
    ctx = ConvertContext(example_inputs={"img": (1, 3, calib_size, calib_size)}, backend=backend)
    qat = Float2QAT()(copy.deepcopy(model).eval(), ctx)
    qat.body.train()
    with torch.no_grad():
        for x in calib:
            qat(x)
    qat.eval()
    freeze_observers(qat)
    ctx_d = ConvertContext(example_inputs={"img": (1, 3, *deploy_hw)}, backend=backend)
    qat_d = Float2QAT()(copy.deepcopy(model).eval(), ctx_d)
    qat_d.load_state_dict(qat.state_dict())
    qat_d.eval()
    freeze_observers(qat_d)
    return QAT2Quantize()(qat_d, ctx_d).eval()


def coco_ap(
    gt_batch: dict[str, Any], detections: Sequence[dict[str, Any]], num_classes: int
) -> dict[str, float]:
    """COCO box AP@[.5:.95] and AP50 of ``detections`` against the batch's boxes
    (pycocotools, the reference implementation)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    imgs, anns, res = [], [], []
    for i, (bx, lb) in enumerate(zip(gt_batch["gt_bboxes"], gt_batch["gt_classes"])):
        imgs.append({"id": i + 1, "width": SIZE, "height": SIZE})
        for (x1, y1, x2, y2), c in zip(bx.tolist(), lb.tolist()):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    for i, d in enumerate(detections):
        for (x1, y1, x2, y2), s, c in zip(
            d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()
        ):
            res.append(
                {
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": imgs,
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        gt.createIndex()
        if not res:
            return {"AP": 0.0, "AP50": 0.0}
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}


# --- a test plugin: the stand-ins as registered components (for config-driven tests) --------


@attrs.frozen(kw_only=True)
class StandInBackboneArgs:
    """Test stand-in backbone (strides 8, 16)."""

    width: int = arg(16, help="channels of the stride-4 stage")


@attrs.frozen(kw_only=True)
class StandInNeckArgs:
    """Test stand-in FPN-like neck (strides 8, 16, 32)."""

    in_channels: list[int] = arg([32, 32], help="channels of the incoming features")
    out_channels: int = arg(32, help="output channels")


class StandIns:
    """Registers ``onnx_test_backbone`` and ``onnx_test_neck``."""

    @hookimpl
    def register_backbones(self, register):
        register("onnx_test_backbone", factory=stand_in_backbone, schema=StandInBackboneArgs)

    @hookimpl
    def register_necks(self, register):
        register("onnx_test_neck", factory=StandInNeck, schema=StandInNeckArgs)
