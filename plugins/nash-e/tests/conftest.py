"""Shared builders: small integer models made directly from fcos integer ops.

The integer model (``fcos_core.quantization.integer_model.IntegerModel``) is the reference the
compiled program must match bit for bit. These builders make models with random int8 weights,
int32 biases and requantization multipliers from ``int_ops.quantize_multiplier`` -- covering
every op kind the lowering supports (conv dense/depthwise/grouped, stride 1/2, 1x1..5x5, ReLU,
int8/int16/int32 outputs, add with ReLU, requantize, relu, max-pool 2x2/3x3 incl. ceil_mode,
nearest x2 upsample, cat) -- without a training run, so the tests stay fast.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

torch = pytest.importorskip("torch")

from fcos_core.quantization import int_ops  # noqa: E402
from fcos_core.quantization.integer_model import IntegerModel, IntOp  # noqa: E402


class _Builder:
    """Adds integer ops one by one and calibrates each output scale on a sample image, so that
    values use the integer range (a few saturate) as in a real quantized model."""

    def __init__(self, seed: int, size: tuple[int, int]) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.ops: list[IntOp] = []
        self.tensors: dict[str, dict[str, Any]] = {}
        self.scale: dict[str, float] = {}
        self.dtype: dict[str, str] = {}
        self.channels: dict[str, int] = {}
        img = to_float_input(random_images(1, size, seed + 1000))
        self.env: dict[str, Any] = {"img": img}

    def _u(self, lo: float, hi: float) -> float:
        return float(torch.empty(1).uniform_(lo, hi, generator=self.g))

    @staticmethod
    def _f32(v: float) -> float:
        return float(torch.tensor(v, dtype=torch.float32))

    def _calibrated(self, real: Any, dtype: str) -> float:
        """An output scale putting the 99.5th percentile of |real| at 0.6..1.1 of qmax."""
        qmax = 127 if dtype == "int8" else 32767
        top = float(torch.quantile(real.abs().flatten().double()[:100000], 0.995)) or 1.0
        return self._f32(top / qmax * self._u(0.6, 1.1))

    def _run_last(self) -> None:
        model = IntegerModel(self.ops, self.tensors, [self.ops[-1].name], dequant_output=False)
        self.env[self.ops[-1].name] = model.run_all(self.env["img"])[self.ops[-1].name]

    def quantize(self, name: str, channels: int) -> str:
        self.ops.append(IntOp(name, "quantize", ("img",), "int8"))
        self.tensors[name] = {"scale": torch.tensor(1 / 128, dtype=torch.float32)}
        self.scale[name], self.dtype[name], self.channels[name] = 1 / 128, "int8", channels
        self._run_last()
        return name

    def conv(
        self,
        name: str,
        x: str,
        cout: int,
        k: int,
        stride: int = 1,
        groups: int = 1,
        relu: bool = False,
        dtype: str = "int8",
        bias: bool = True,
    ) -> str:
        cin = self.channels[x]
        w = torch.randint(
            -127, 128, (cout, cin // groups, k, k), generator=self.g, dtype=torch.int8
        )
        w_scale = torch.empty(cout).uniform_(0.002, 0.02, generator=self.g).float()
        acc_scale = self.scale[x] * w_scale.double()
        t: dict[str, Any] = {"weight": w, "weight_scale": w_scale}
        if bias:
            t["bias"] = torch.randint(-3000, 3000, (cout,), generator=self.g, dtype=torch.int32)
        pad = k // 2
        static = {
            "stride": (stride, stride),
            "padding": (pad, pad),
            "dilation": (1, 1),
            "groups": groups,
            "relu": relu,
        }
        if dtype == "int32":
            # the integer model requires multiplier/shift buffers; an int32 output ignores them
            t.update(
                scale=acc_scale,
                multiplier=torch.ones(cout, dtype=torch.long),
                shift=torch.ones(cout, dtype=torch.long),
            )
        else:
            acc = int_ops.conv2d_acc(
                self.env[x], w, t.get("bias"), static["stride"], static["padding"], (1, 1), groups
            )
            real = acc.double() * acc_scale.reshape(1, -1, 1, 1)
            s_out = self._calibrated(real.clamp_min(0) if relu else real, dtype)
            m, n = int_ops.quantize_multiplier(acc_scale / s_out)
            t.update(multiplier=m, shift=n, scale=torch.tensor(s_out, dtype=torch.float32))
        self.ops.append(IntOp(name, "conv2d", (x,), dtype, static))
        self.tensors[name] = t
        self.scale[name] = 1.0 if dtype == "int32" else float(t["scale"])
        self.dtype[name], self.channels[name] = dtype, cout
        self._run_last()
        return name

    def add(self, name: str, a: str, b: str, relu: bool = False) -> str:
        real = self.env[a].double() * self.scale[a] + self.env[b].double() * self.scale[b]
        s_out = self._calibrated(real.clamp_min(0) if relu else real, "int8")
        ra = torch.tensor(self.scale[a] / s_out, dtype=torch.float64)
        rb = torch.tensor(self.scale[b] / s_out, dtype=torch.float64)
        _, n = int_ops.quantize_multiplier(torch.maximum(ra, rb))
        ma = torch.round(ra * 2.0 ** n.double()).long()
        mb = torch.round(rb * 2.0 ** n.double()).long()
        self.ops.append(IntOp(name, "add", (a, b), "int8", {"relu": relu}))
        self.tensors[name] = {
            "multiplier_a": ma,
            "multiplier_b": mb,
            "shift": n,
            "scale": torch.tensor(s_out, dtype=torch.float32),
        }
        self.scale[name], self.dtype[name], self.channels[name] = s_out, "int8", self.channels[a]
        self._run_last()
        return name

    def same(self, name: str, kind: str, x: str | list[str], **attrs: Any) -> str:
        xs = x if isinstance(x, list) else [x]
        self.ops.append(IntOp(name, kind, tuple(xs), self.dtype[xs[0]], attrs))
        self.tensors[name] = {"scale": torch.tensor(self.scale[xs[0]], dtype=torch.float32)}
        self.scale[name], self.dtype[name] = self.scale[xs[0]], self.dtype[xs[0]]
        self.channels[name] = sum(self.channels[v] for v in xs)
        self._run_last()
        return name

    def requantize(self, name: str, x: str, dtype: str) -> str:
        s_out = self._calibrated(self.env[x].double() * self.scale[x], dtype)
        m, n = int_ops.quantize_multiplier(torch.tensor(self.scale[x] / s_out, dtype=torch.float64))
        self.ops.append(IntOp(name, "requantize", (x,), dtype))
        self.tensors[name] = {
            "multiplier": m,
            "shift": n,
            "scale": torch.tensor(s_out, dtype=torch.float32),
        }
        self.scale[name], self.dtype[name], self.channels[name] = s_out, dtype, self.channels[x]
        self._run_last()
        return name

    def build(self, outputs: list[str], dequant: bool) -> IntegerModel:
        return IntegerModel(self.ops, self.tensors, outputs, dequant_output=dequant)


def make_mini_fcos(
    seed: int = 0,
    num_classes: int = 5,
    dequant: bool = False,
    head_dtype: str = "int16",
    size: int = 64,
) -> IntegerModel:
    """An FCOS-shaped integer model: stem, MBConv-like blocks with residuals, a 2-level
    BiFPN-like fusion (max-pool down, x2 upsample up, adds) and a shared head with int16
    outputs. Output order: cls_0, cls_1, box_0, box_1, ctr_0, ctr_1 (strides 4, 8)."""
    b = _Builder(seed, (size, size))
    x = b.quantize("quantize_img", 3)
    x = b.conv("stem", x, 8, 3, stride=2, relu=True)  # /2
    e = b.conv("b1_expand", x, 24, 1, relu=True)
    d = b.conv("b1_dw", e, 24, 3, stride=2, groups=24, relu=True)  # /4
    p4 = b.conv("b1_project", d, 12, 1, bias=False)
    e = b.conv("b2_expand", p4, 36, 1, relu=True)
    d = b.conv("b2_dw", e, 36, 5, groups=36, relu=True)
    p = b.conv("b2_project", d, 12, 1)
    p4 = b.add("b2_residual", p, p4)
    e = b.conv("b3_expand", p4, 24, 1, relu=True)
    d = b.conv("b3_dw", e, 24, 3, stride=2, groups=24, relu=True)  # /8
    p8 = b.conv("b3_project", d, 16, 1)
    # neck: lateral 1x1 to 16 channels, top-down and bottom-up fusion
    l4 = b.conv("neck_lateral4", p4, 16, 1)
    up = b.same("neck_up", "upsample_nearest2d", p8, output_size=None, scale_factors=(2.0, 2.0))
    n4 = b.add("neck_td4", l4, up, relu=True)
    n4 = b.conv("neck_td4_dw", n4, 16, 3, groups=16)
    n4 = b.conv("neck_td4_pw", n4, 16, 1)
    down = b.same(
        "neck_down",
        "max_pool2d",
        n4,
        kernel_size=(2, 2),
        stride=(2, 2),
        padding=(0, 0),
        dilation=(1, 1),
        ceil_mode=False,
    )
    n8 = b.add("neck_bu8", p8, down, relu=True)
    n8 = b.conv("neck_bu8_dw", n8, 16, 3, groups=16)
    n8 = b.conv("neck_bu8_pw", n8, 16, 1)
    outs: dict[str, list[str]] = {"cls": [], "box": [], "ctr": []}
    for lvl, f in enumerate((n4, n8)):
        c = b.conv(f"head_cls_tower_{lvl}", f, 16, 3, relu=True)
        r = b.conv(f"head_reg_tower_{lvl}", f, 16, 3, relu=True)
        outs["cls"].append(b.conv(f"head_conv_cls_{lvl}", c, num_classes, 3, dtype=head_dtype))
        outs["box"].append(b.conv(f"head_conv_reg_{lvl}", r, 4, 3, dtype=head_dtype, relu=True))
        outs["ctr"].append(b.conv(f"head_conv_centerness_{lvl}", r, 1, 3, dtype=head_dtype))
    return b.build(outs["cls"] + outs["box"] + outs["ctr"], dequant)


def make_op_zoo(seed: int = 0, dequant: bool = True, size: int = 62) -> IntegerModel:
    """Every op kind and variant not in the mini FCOS: grouped conv, 7x7, ceil-mode 3x3 pool,
    cat, requantize to int16, standalone relu, int16-input conv, int32 output with ReLU."""
    b = _Builder(seed, (size, size))
    x = b.quantize("quantize_img", 3)
    x = b.conv("c7", x, 8, 7, stride=2, relu=False)
    r = b.same("relu", "relu", x)
    g = b.conv("grouped", r, 8, 3, groups=2, relu=True)
    pool = b.same(
        "pool3",
        "max_pool2d",
        g,
        kernel_size=(3, 3),
        stride=(2, 2),
        padding=(1, 1),
        dilation=(1, 1),
        ceil_mode=True,
    )
    pool2 = b.same(
        "pool2ceil",
        "max_pool2d",
        g,
        kernel_size=(2, 2),
        stride=(2, 2),
        padding=(0, 0),
        dilation=(1, 1),
        ceil_mode=True,
    )
    cat = b.same("cat", "cat", [pool, pool2], dim=1)
    q16 = b.requantize("to16", cat, "int16")
    c16 = b.conv("conv_int16_in", q16, 6, 3, relu=True)
    acc = b.conv("acc_out", c16, 3, 1, dtype="int32", relu=True)
    acc2 = b.conv("acc_out_norelu", c16, 2, 3, dtype="int32")
    back = b.requantize("back8", c16, "int8")
    return b.build([acc, acc2, back, q16], dequant)


class MiniDetector(torch.nn.Module):
    """A deploy model around an integer body, with the compile filter (like FCOS)."""

    def __init__(self, body: IntegerModel, strides: list[int]) -> None:
        super().__init__()
        from fcos_core.models.post_process import FCOSMultiStrideFilter

        self.body = body
        self.post_process = FCOSMultiStrideFilter(
            strides, threshold=-2.944, for_compile=True, max_shape=(64, 64)
        )

    def forward(self, img):
        return self.post_process(self.body(img))


def random_images(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 YUV444 frames [n, 3, H, W]: smooth blobs plus noise, like real images."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, 3, h, w), np.uint8)
    for i in range(n):
        base = rng.uniform(0, 255, size=(3, 1, 1))
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, h / 2)
            amp = rng.uniform(-120, 120, size=(3, 1, 1))
            base = base + amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out[i] = np.clip(base + rng.normal(0, 20, size=(3, h, w)), 0, 255).astype(np.uint8)
    return out


def to_float_input(yuv: np.ndarray) -> torch.Tensor:
    """The float pipeline's input: (yuv - 128) / 128."""
    return (torch.from_numpy(yuv.astype(np.float32)) - 128.0) / 128.0


@pytest.fixture(scope="session")
def nash():
    """The builders above (tests run with --import-mode=importlib and cannot import conftest)."""
    import types

    return types.SimpleNamespace(
        make_mini_fcos=make_mini_fcos,
        make_op_zoo=make_op_zoo,
        MiniDetector=MiniDetector,
        random_images=random_images,
        to_float_input=to_float_input,
    )
