"""Small networks for the quantization tests: a conv-BN-ReLU-add net and a tiny FCOS-like
detector (``body`` with a backbone, a BiFPN-like merge and the real FCOSHead)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcos_core.convert_context import ConvertContext
from fcos_core.testing.standins import TinyBackbone, TinyNeck

IMG = 32


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return module


class SmallNet(nn.Module):
    """conv-BN-ReLU -> depthwise conv-BN-ReLU -> 1x1 conv-BN + residual add -> ReLU ->
    max-pool / nearest upsample / add -> two output convs. ``img [B,3,H,W]`` -> 2 maps."""

    def __init__(self, int16_output: bool = False, int8_output: bool = True) -> None:
        super().__init__()
        self.int16_output = int16_output
        self.int8_output = int8_output
        self.dequant_output = True
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.out_a = nn.Conv2d(8, 4, 3, padding=1)
        self.out_b = nn.Conv2d(8, 2, 1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(img)
        y = F.relu(x + self.pw(self.dw(x)))
        p = F.max_pool2d(y, 2)
        z = y + F.interpolate(p, scale_factor=2.0, mode="nearest")
        return self.out_a(z), F.relu(self.out_b(p))


class TinyBody(nn.Module):
    def __init__(self, int16_output: bool = True) -> None:
        super().__init__()
        from fcos_core.models.head import FCOSHead

        # strides 4 and 8: an MBConv residual at stride 4, then one BiFPN-like pass
        # (upsample + add top-down, max-pool + add bottom-up)
        self.backbone = TinyBackbone((4, 8), channels=(8, 16, 16), residual_at=(4,))
        self.neck = TinyNeck((4, 8), (16, 16), 16, fusion="bifpn")
        self.head = FCOSHead(
            num_classes=3,
            in_strides=[4, 8],
            out_strides=[4, 8],
            stride2channels={4: 16, 8: 16},
            feat_channels=16,
            stacked_convs=2,
            int8_output=not int16_output,
            int16_output=int16_output,
        )
        for m in self.modules():  # the head's N(0, 0.01) init gives near-zero outputs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1.0)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(self.neck(self.backbone(img)))


class TinyDetector(nn.Module):
    """FCOS-like wrapper: the converters quantize ``body`` and keep the rest."""

    def __init__(self, int16_output: bool = True) -> None:
        super().__init__()
        self.body = TinyBody(int16_output)
        self.extra = nn.Linear(2, 2)  # stands for the non-quantized parts (losses, decoding)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.body(img)


def make_small(seed: int = 0, **kwargs: bool) -> SmallNet:
    torch.manual_seed(seed)
    return randomise_bn(SmallNet(**kwargs), seed).eval()


def make_detector(seed: int = 0, int16_output: bool = True) -> TinyDetector:
    torch.manual_seed(seed)
    return randomise_bn(TinyDetector(int16_output), seed).eval()


def images(n: int, seed: int, size: int = IMG) -> torch.Tensor:
    """Normalised images in [-1, 1) like Normalize(mean=128, std=128) produces."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def make_ctx(size: int = IMG) -> ConvertContext:
    return ConvertContext(example_inputs={"img": (1, 3, size, size)})


def steps_apart(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """|a - b| in output steps (per-tensor or per-channel scale on dim 1)."""
    s = scale.reshape(1, -1, 1, 1) if scale.numel() > 1 else scale
    return (a.double() - b.double()).abs() / s.double()


def fit_to_teacher(
    model: nn.Module,
    teacher: nn.Module,
    steps: int,
    lr: float,
    seed0: int = 200,
    batch: int = 4,
    optimizer: str = "sgd",
) -> nn.Module:
    """A few optimizer steps of ``model`` towards the float ``teacher``'s outputs (moves the
    weights and, in QAT, the ranges); returns the model in eval mode."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    for i in range(steps):
        x = images(batch, seed0 + i)
        with torch.no_grad():
            target = teacher(x)
        loss = sum(((o - t) ** 2).mean() for o, t in zip(model(x), target))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
