"""Tiny stand-ins for the engine tests: a detector-shaped model, a dataset, a metric,
quantization-like converters and a compile backend, registered as an fcos plugin.

They follow the contracts of docs/interfaces.md (dict batches; a dict of losses in train mode;
per-image detections in eval mode; the raw outputs when called with an image tensor) at a size
where a training step takes milliseconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcos_core import hookimpl
from fcos_core.quantization_state import get_qstate
from fcos_core.schema import arg

# --- model ------------------------------------------------------------------------------------


class TinyBody(nn.Module):
    """img [B, 3, H, W] -> (cls logit [B, 1], reg [B, 1])."""

    def __init__(self, channels: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Linear(channels, 1)
        self.reg = nn.Linear(channels, 1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(img)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.drop(x.mean(dim=(2, 3)))
        return self.cls(x), self.reg(x)


class TinyDet(nn.Module):
    """Detector-shaped stand-in: losses in train mode, detections in eval mode."""

    def __init__(self, channels: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = TinyBody(channels, dropout)

    def forward(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):  # deploy call
            return self.body(batch)
        logit, reg = self.body(batch["img"])
        if self.training:
            return {
                "cls": F.binary_cross_entropy_with_logits(logit[:, 0], batch["label"]),
                "reg": F.mse_loss(reg[:, 0], batch["target"]),
            }
        scores = torch.sigmoid(logit[:, 0])
        return [
            {
                "boxes": torch.zeros(1, 4),
                "scores": s.reshape(1),
                "labels": torch.zeros(1),
                "reg": r.reshape(1),
            }
            for s, r in zip(scores, reg[:, 0])
        ]


@attrs.frozen(kw_only=True)
class TinyDetArgs:
    """Tiny detector-shaped model for engine tests."""

    channels: int = arg(8, help="conv channels")
    dropout: float = arg(0.0, help="dropout before the heads")


# --- data -------------------------------------------------------------------------------------


class TinySet(torch.utils.data.Dataset):
    """``n`` items of 3 x size x size; label/target depend on the image; random flip + noise
    drawn from numpy (so worker/resume seeding matters)."""

    def __init__(
        self,
        n: int = 16,
        size: int = 32,
        augment: bool = True,
        nan_index: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.n, self.size, self.augment = n, size, augment
        self.nan_index, self.delay = nan_index, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.delay:
            time.sleep(self.delay)
        g = torch.Generator().manual_seed(1000 + i)
        img = torch.randn(3, self.size, self.size, generator=g)
        label = float(img[0].mean() > 0)
        target = float(img[1].mean() * 4)
        if self.augment:
            if np.random.rand() < 0.5:
                img = img.flip(-1)
            img = (
                img
                + torch.from_numpy(np.random.randn(3, self.size, self.size).astype(np.float32))
                * 0.05
            )
        if self.nan_index is not None and i == self.nan_index:
            img = img * float("nan")
        return {
            "img": img,
            "label": torch.tensor(label),
            "target": torch.tensor(target),
            "img_id": i,
        }


@attrs.frozen(kw_only=True)
class TinySetArgs:
    """Tiny synthetic dataset for engine tests."""

    n: int = arg(16, help="items")
    size: int = arg(32, help="image side")
    augment: bool = arg(True, help="random flip + noise")
    nan_index: int | None = arg(None, help="item whose image is NaN")
    delay: float = arg(0.0, help="seconds of sleep per item")
    transforms: list[Any] = arg([], help="ignored")


# --- metric -----------------------------------------------------------------------------------

from fcos_core.engine.summary import COCO_KEYS  # noqa: E402 - the names every metric reports


class TinyMetric:
    """Accuracy of the sigmoid score against the label, reported under the 12 COCO keys."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.right = 0
        self.total = 0

    def update(self, batch: Any, outputs: Any) -> None:
        for det, label in zip(outputs, batch["label"]):
            self.right += int((det["scores"][0] > 0.5).float().item() == float(label))
            self.total += 1

    def compute(self) -> dict[str, float]:
        acc = self.right / max(self.total, 1)
        return dict.fromkeys(COCO_KEYS, acc)


@attrs.frozen(kw_only=True)
class TinyMetricArgs:
    """Accuracy under COCO keys for engine tests."""


class ScriptedMetric:
    """Reports ``values[i]`` as every COCO key at its i-th validation (then the last value)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.calls = 0

    def reset(self) -> None:
        pass

    def update(self, batch: Any, outputs: Any) -> None:
        pass

    def compute(self) -> dict[str, float]:
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return dict.fromkeys(COCO_KEYS, v)


@attrs.frozen(kw_only=True)
class ScriptedMetricArgs:
    """A metric whose values are given (tests of what reacts to validation results)."""

    values: list[float] = arg(help="the value of each validation in turn")


# --- quantization-like converters -------------------------------------------------------------


class _FakeQuant(nn.Module):
    """Wraps the body; rounds outputs to a grid (changes numbers a little, adds a buffer)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.inner = body
        self.register_buffer("scale", torch.tensor(1.0 / 64))

    def forward(self, img: torch.Tensor) -> Any:
        outs = self.inner(img)
        # straight-through rounding: QAT-like forward, identity gradient
        return tuple(o + (torch.round(o / self.scale) * self.scale - o).detach() for o in outs)


class StandinFloat2Calibration:
    fcos_requires_qstate = ("float",)
    fcos_produces_qstate = "calibration"

    def __call__(self, model: nn.Module, ctx: Any) -> nn.Module:
        model.body = _FakeQuant(model.body)
        return model


class StandinFloat2QAT:
    fcos_requires_qstate = ("float",)
    fcos_produces_qstate = "qat"

    def __call__(self, model: nn.Module, ctx: Any) -> nn.Module:
        model.body = _FakeQuant(model.body)
        return model


class StandinQAT2Quantize:
    fcos_requires_qstate = ("qat",)
    fcos_produces_qstate = "quantized"

    def __call__(self, model: nn.Module, ctx: Any) -> nn.Module:
        assert get_qstate(model) == "qat"
        model.body = torch.fx.symbolic_trace(model.body)  # a GraphModule, as PT2E gives
        return model


@attrs.frozen(kw_only=True)
class NoArgs:
    """A converter without arguments."""


# --- compile backend --------------------------------------------------------------------------


class TinyBackend:
    """Writes the model's output shapes and a TorchScript file: enough to prove the call."""

    def compile(self, model: Any, example_inputs: dict, options: dict, out_dir: Path) -> Any:
        out_dir = Path(out_dir)
        img = example_inputs["img"]
        with torch.no_grad():
            outs = model(img)
        (out_dir / "report.json").write_text(
            json.dumps(
                {
                    "shapes": [list(o.shape) for o in outs],
                    "options": options,
                    "qstate": get_qstate(model),
                }
            )
        )
        return str(out_dir / "report.json")


@attrs.frozen(kw_only=True)
class TinyBackendArgs:
    """Stand-in compile backend."""

    name: str = arg("tiny", help="artifact name")
    out_dir: str | None = arg(None, help="output folder")


# --- registration -----------------------------------------------------------------------------


@hookimpl
def register_models(register):
    register("TinyDet", factory=TinyDet, schema=TinyDetArgs)


@hookimpl
def register_datasets(register):
    register("TinySet", factory=lambda transforms=(), **kw: TinySet(**kw), schema=TinySetArgs)


@hookimpl
def register_metrics(register):
    register("TinyMetric", factory=TinyMetric, schema=TinyMetricArgs)
    register("ScriptedMetric", factory=ScriptedMetric, schema=ScriptedMetricArgs)


@hookimpl
def register_converters(register):
    register("StandinFloat2Calibration", factory=StandinFloat2Calibration, schema=NoArgs)
    register("StandinFloat2QAT", factory=StandinFloat2QAT, schema=NoArgs)
    register("StandinQAT2Quantize", factory=StandinQAT2Quantize, schema=NoArgs)


@hookimpl
def register_compile_backends(register):
    register("tinymarch", factory=TinyBackend, schema=TinyBackendArgs)
