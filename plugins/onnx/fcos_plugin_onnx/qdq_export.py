"""Translate fcos's integer program into a QDQ ONNX graph.

The source is the quantized deploy model's :class:`~fcos_core.quantization.integer_model.
IntegerModel`, read through the public :func:`~fcos_core.quantization.integer_model.
integer_program` (ops, int8 weights, int32 biases, scales). Each integer op becomes the standard
QDQ pattern ONNX Runtime recognises and fuses into integer kernels:

=====================  ===============================================================
fcos op                ONNX (``Q`` = QuantizeLinear, ``DQ`` = DequantizeLinear)
=====================  ===============================================================
quantize               Q(img, 1/128)
conv2d (int8/int16)    DQ(x), DQ_pc(w int8, axis 0), DQ_pc(b int32, s_in*s_w) -> Conv -> Q
  ... with relu        ... -> Q -> Clip(min = zero point): ReLU on the codes, exact
conv2d (int32 out)     DQ(x), DQ_pc(w), DQ_pc(b) -> Conv [-> Relu]: the float accumulator
add [relu]             DQ(a), DQ(b) -> Add -> Q [-> Clip]
requantize             DQ(x) -> Q(new scale / dtype)
relu                   Clip on the codes (int16: DQ -> Relu -> Q)
max_pool2d / upsample  DQ(x) -> MaxPool / Resize(nearest, asymmetric, floor) / Concat -> Q,
/ cat                  same scale
=====================  ===============================================================

``requantization="integer"`` replaces the float requantization of the table by fcos's own
integer arithmetic, bit-exact with the integer model: ``ConvInteger`` (uint8 x uint8, zero
points 128) -> int32 accumulator -> int64 ``+ bias``, ``* M[c]``, ``+ 2**(n-1)``, floor
division by ``2**n`` (``t - Mod(t, 2**n)`` then ``Div``: exact), ``Clip`` (saturation, fused
ReLU) and ``Cast`` to the storage type; adds ``a * Ma + b * Mb`` and requantizations likewise.

Choices that make ORT run integer kernels (measured with onnxruntime 1.32 on x86):

* int8 activations are stored as **uint8 with zero point 128** (``uint8_activations``): the same
  codes shifted by 128, the same saturation. ORT's x86 ``QLinearConv`` takes uint8 activations;
  with int8 ones it rewrites only some Q/DQ pairs to uint8 and leaves the other convs in float
  (none of the 182 convs of the EfficientNet-B0 + BiFPN deploy model fused).
* int8 weights are stored as **uint8 with zero point 128** as well (``uint8_weights``, the
  default with uint8 activations): on x86 without AVX-512 VNNI, ORT's u8 x s8 kernel uses
  ``VPMADDUBSW``, whose pairwise int16 sums saturate; its u8 x u8 kernel is exact.
* ReLU is applied **after** the conv's ``Q``, on the codes: fcos quantizes symmetrically, so ORT
  cannot fold a ReLU into ``Q`` (it does that only when the zero point is the type minimum), and
  a ReLU between ``Conv`` and ``Q`` would block the ``QLinearConv`` fusion.
* One ``DQ`` per consumer, as ORT's QDQ node-unit selection wants.

int16 tensors (the head's ``int16_output``) have no integer conv kernel in ORT: those convs run
as float convs on dequantized inputs followed by an int16 ``Q``.

Numerics of ``requantization="float"``: the codes agree with the integer model up to rounding.
fcos requantizes with an integer multiplier and rounds ties up; ORT multiplies by a float32
scale ratio and rounds ties to even, so an element can differ by one step per op, and a deep
model amplifies the differences (see the README). ``requantization="integer"`` is exact.

The post-process of a ``for_compile`` deploy model (``FCOSMultiStrideFilter``) appends, per
stride, the largest class logit (``ReduceMax`` over channels); that op is exact on codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

ONNX_TYPES = {
    "int8": 3,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "float32": 1,
    "uint8": 2,
}  # TensorProto enums
NP_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "uint8": np.uint8}

#: op kinds of the integer program this exporter translates
SUPPORTED_KINDS = frozenset(
    {"quantize", "conv2d", "add", "requantize", "relu", "max_pool2d", "upsample_nearest2d", "cat"}
)

#: lowest opset the exporter emits: per-axis DequantizeLinear (13), Shape start/end (15),
#: ReduceMax with axes as an input (18); int16 QuantizeLinear needs 21
MIN_OPSET = 18

#: ``float``: the standard QDQ pattern (runtimes fuse it into QLinearConv and friends, which
#: requantize with a float32 ratio, ties to even); ``integer``: ConvInteger and int64
#: arithmetic with fcos's multipliers and shifts, bit-exact with the integer model
REQUANTIZATIONS = ("float", "integer")
MIN_OPSET_INT16 = 21


class ExportError(ValueError):
    """The integer program holds something this exporter cannot express (names the op)."""


@attrs.frozen
class OutputSpec:
    """One graph output of the exported model, in the deploy model's output order."""

    name: str  # ONNX output name
    value: str  # integer-program value it comes from
    dtype: str  # int8 | int16 | int32 | float32 (dequantized)
    scale: list[float]  # step of one code: per tensor [s], per channel [s_c] (int32 outputs)
    kind: str  # "body", "max_logit" or "value" (an intermediate of a debug export)
    zero_point: int = 0  # integer code = raw value - zero_point (128 for uint8 activations)


@attrs.frozen
class ExportedGraph:
    """What :func:`build_qdq_model` produced: the ONNX model and the output description."""

    model: Any  # onnx.ModelProto
    outputs: tuple[OutputSpec, ...]
    input_name: str
    input_dtype: str  # float32 (normalised image) or uint8 (pyramid: raw YUV444 planes)
    input_shape: tuple[Any, ...]
    values: tuple[OutputSpec, ...] = ()  # intermediates exposed as outputs (debug export)


def output_names(n_body: int, strides: Sequence[int] | None, with_max_logit: bool) -> list[str]:
    """Readable names: ``cls_8, ..., box_8, ..., ctr_8, ...[, max_logit_8, ...]`` for an FCOS
    body with strides, ``out_0..`` otherwise."""
    st = list(strides or [])
    if st and n_body == 3 * len(st):
        names = [f"{kind}_{s}" for kind in ("cls", "box", "ctr") for s in st]
        return names + ([f"max_logit_{s}" for s in st] if with_max_logit else [])
    names = [f"out_{i}" for i in range(n_body)]
    return names + ([f"max_logit_{i}" for i in range(len(st))] if with_max_logit else [])


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._names: set[str] = set()
        self._consts: dict[tuple[str, bytes, str], str] = {}

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        """An initializer; identical small constants (scales, zero points) are shared."""
        array = np.ascontiguousarray(array)
        key = (str(array.dtype), array.tobytes(), str(array.shape))
        if array.size <= 64 and key in self._consts:
            return self._consts[key]
        name = self.unique(base)
        self.inits.append(self.numpy_helper.from_array(array, name))
        if array.size <= 64:
            self._consts[key] = name
        return name

    def node(
        self, op: str, inputs: Sequence[str], base: str, out: str | None = None, **attributes: Any
    ) -> str:
        out = out if out is not None else self.unique(base)
        self.nodes.append(
            self.helper.make_node(
                op, list(inputs), [out], name=self.unique("n_" + base), **attributes
            )
        )
        return out


def _scalar(t: Any) -> float:
    return float(np.asarray(t.detach().cpu().numpy(), dtype=np.float64).reshape(-1)[0])


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


class _Builder:
    def __init__(
        self,
        records: Sequence[Any],
        opset: int,
        uint8_activations: bool,
        uint8_weights: bool = False,
        integer_requant: bool = False,
    ) -> None:
        self.records = records
        self.opset = opset
        self.uint8 = uint8_activations
        self.uint8_weights = uint8_weights
        self.integer_requant = integer_requant
        self.g = _Graph()
        self.scale: dict[str, float] = {}  # value -> per-tensor scale (quantized values)
        self.dtype: dict[str, str] = {}  # value -> int8 | int16 | int32
        self.acc_scale: dict[str, np.ndarray] = {}  # int32 value -> per-channel scale
        self.float_of: dict[str, str] = {}  # int32 value -> its float (accumulator) tensor
        for rec in records:  # program value names are tensor names: reserve them first
            self.g.unique(rec.op.name)

    # -- quantization helpers ---------------------------------------------------------------

    def zero_point(self, dtype: str) -> int:
        return 128 if dtype == "int8" and self.uint8 else 0

    def onnx_dtype(self, dtype: str) -> str:
        return "uint8" if dtype == "int8" and self.uint8 else dtype

    def _qparams(self, scale: float, dtype: str) -> tuple[str, str]:
        """Scale and zero point of an fcos ``dtype`` tensor. int8 codes ``q`` are stored as
        uint8 ``q + 128`` when ``uint8`` is set: the same grid and the same saturation
        (``sat_u8(round(x / s) + 128) = sat_i8(round(x / s)) + 128``), in the form ORT's x86
        kernels take."""
        s = self.g.const("scale", np.array(scale, dtype=np.float32))
        odt = self.onnx_dtype(dtype)
        z = self.g.const(f"zp_{odt}", np.array(self.zero_point(dtype), dtype=NP_TYPES[odt]))
        return s, z

    def quantize(self, x: str, scale: float, dtype: str, out: str) -> str:
        s, z = self._qparams(scale, dtype)
        return self.g.node("QuantizeLinear", [x, s, z], out + "_q", out=out)

    def dequantize(self, value: str) -> str:
        """A fresh DQ node per consumer: ORT's QDQ fusion wants one DQ per consuming node."""
        if self.dtype[value] == "int32":
            return self.float_of[value]
        s, z = self._qparams(self.scale[value], self.dtype[value])
        return self.g.node("DequantizeLinear", [value, s, z], value + "_dq")

    def _emit_q(self, float_tensor: str, op: Any, relu: bool) -> None:
        """``float -> Q`` into the op's value, with the ReLU after the Q (see module doc)."""
        scale = _scalar(self.tensors["scale"])
        if relu:
            pre = self.quantize(float_tensor, scale, op.dtype, self.g.unique(op.name + "_prerelu"))
            self.scale[pre], self.dtype[pre] = scale, op.dtype
            self.relu_codes(pre, op.name)
        else:
            self.quantize(float_tensor, scale, op.dtype, op.name)
        self.scale[op.name], self.dtype[op.name] = scale, op.dtype

    def relu_codes(self, value: str, out: str) -> str:
        """ReLU of a quantized value, same scale: ``max(code, zero_point)``.

        int8/uint8 codes: ``Clip`` in the integer domain (exact, no float round trip). int16
        (ORT has no int16 Clip): ``DQ -> Relu -> Q``, also exact.
        """
        dtype = self.dtype[value]
        if dtype == "int8":
            odt = self.onnx_dtype(dtype)
            lo = self.g.const(f"relu_min_{odt}", np.array(self.zero_point(dtype), NP_TYPES[odt]))
            return self.g.node("Clip", [value, lo], out + "_clip", out=out)
        r = self.g.node("Relu", [self.dequantize(value)], out + "_relu")
        return self.quantize(r, self.scale[value], dtype, out)

    # -- integer requantization (requantization="integer") -------------------------------

    def _i64(self, base: str, values: Any, per_channel: bool) -> str:
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
        if per_channel and arr.size > 1:
            arr = arr.reshape(1, -1, 1, 1)
        else:
            arr = np.array(arr[0], dtype=np.int64) if arr.size == 1 else arr.reshape(1, -1, 1, 1)
        return self.g.const(base, arr)

    def codes64(self, value: str) -> str:
        """The int64 codes of a stored int8/int16 value (``raw - zero point``)."""
        c = self.g.node("Cast", [value], value + "_i64", to=ONNX_TYPES["int64"])
        zp = self.zero_point(self.dtype[value])
        if zp:
            c = self.g.node(
                "Sub", [c, self.g.const("zp_i64", np.array(zp, np.int64))], value + "_codes"
            )
        return c

    def requant_codes(self, v: str, shift: Any, op: Any, relu: bool) -> None:
        """fcos's ``sat(round_half_up(v / 2**n))`` of the int64 product ``v = acc * M`` into
        the op's value, in integer arithmetic: ``t = v + 2**(n-1)``, ``floor(t / 2**n) =
        (t - Mod(t, 2**n)) / 2**n`` (``Mod`` with ``fmod=0`` takes the divisor's sign, so the
        division is exact), then the saturation bounds and the storage type."""
        n = np.asarray(shift, dtype=np.int64).reshape(-1)
        if int(n.min()) < 1 or int(n.max()) > 62:
            raise ExportError(f"{op.name}: shift {n.tolist()} outside 1..62")
        name = op.name
        off = self._i64(name + "_round", np.left_shift(np.int64(1), n - 1), True)
        div = self._i64(name + "_div", np.left_shift(np.int64(1), n), True)
        t = self.g.node("Add", [v, off], name + "_t")
        r = self.g.node("Mod", [t, div], name + "_mod", fmod=0)
        q = self.g.node("Div", [self.g.node("Sub", [t, r], name + "_floor"), div], name + "_q")
        qmin, qmax = {"int8": (-128, 127), "int16": (-32768, 32767)}[op.dtype]
        zp = self.zero_point(op.dtype)
        if zp:
            q = self.g.node(
                "Add", [q, self.g.const("zp_i64", np.array(zp, np.int64))], name + "_zp"
            )
        lo = self.g.const("clip_i64", np.array((0 if relu else qmin) + zp, np.int64))
        hi = self.g.const("clip_i64", np.array(qmax + zp, np.int64))
        c = self.g.node("Clip", [q, lo, hi], name + "_sat")
        odt = self.onnx_dtype(op.dtype)
        self.g.node("Cast", [c], name + "_cast", out=name, to=ONNX_TYPES[odt])
        self.scale[name], self.dtype[name] = _scalar(self.tensors["scale"]), op.dtype

    def conv_integer(self, op: Any, w_name: str) -> None:
        """``ConvInteger`` (uint8 x uint8, zero points 128: MLAS's exact u8u8 kernel) -> the
        int32 accumulator -> ``+ bias`` -> ``* M[c]`` in int64 -> :meth:`requant_codes`."""
        t, a = self.tensors, op.attrs
        x = op.inputs[0]
        if self.dtype[x] != "int8" or not self.uint8:
            raise ExportError(
                f"{op.name} (conv2d): integer requantization takes int8 inputs "
                f"stored as uint8 (input {x} is {self.dtype[x]}); use "
                "requantization 'float'"
            )
        kh, kw = int(t["weight"].shape[2]), int(t["weight"].shape[3])
        ph, pw = (int(v) for v in a["padding"])
        xz = self.g.const("zp_uint8", np.array(128, np.uint8))
        wz = self.g.const("zp_uint8", np.array(128, np.uint8))
        acc = self.g.node(
            "ConvInteger",
            [x, w_name, xz, wz],
            op.name + "_acc",
            kernel_shape=[kh, kw],
            strides=[int(v) for v in a["stride"]],
            pads=[ph, pw, ph, pw],
            dilations=[int(v) for v in a["dilation"]],
            group=int(a["groups"]),
        )
        v = self.g.node("Cast", [acc], op.name + "_acc64", to=ONNX_TYPES["int64"])
        if "bias" in t:
            b = self._i64(op.name + "_b64", _np(t["bias"]).astype(np.int64), True)
            v = self.g.node("Add", [v, b], op.name + "_accb")
        m = self._i64(op.name + "_mult", _np(t["multiplier"]), True)
        v = self.g.node("Mul", [v, m], op.name + "_prod")
        self.requant_codes(v, _np(t["shift"]), op, relu=bool(a.get("relu")))

    # -- ops --------------------------------------------------------------------------------

    def op_quantize(self, op: Any, input_name: str) -> None:
        self._emit_q(input_name, op, relu=False)

    def op_conv2d(self, op: Any) -> None:
        t, a = self.tensors, op.attrs
        x = op.inputs[0]
        w_q = _np(t["weight"]).astype(np.int8)
        w_scale = _np(t["weight_scale"]).astype(np.float32).reshape(-1)
        s_in = self.scale[x]
        ws = self.g.const(op.name + "_w_scale", w_scale)
        if self.integer_requant and op.dtype != "int32":
            w = self.g.const(op.name + "_w", (w_q.astype(np.int16) + 128).astype(np.uint8))
            self.conv_integer(op, w)
            return
        if self.uint8_weights:
            # int8 code w stored as uint8 w + 128, zero point 128: the same values, and ORT's
            # x86 kernel for uint8 x uint8 is exact (see the module doc: u8 x s8 saturates)
            w = self.g.const(op.name + "_w", (w_q.astype(np.int16) + 128).astype(np.uint8))
            wz = self.g.const(op.name + "_w_zp", np.full(w_scale.shape, 128, np.uint8))
        else:
            w = self.g.const(op.name + "_w", w_q)
            wz = self.g.const(op.name + "_w_zp", np.zeros(w_scale.shape, np.int8))
        w_dq = self.g.node("DequantizeLinear", [w, ws, wz], op.name + "_w_dq", axis=0)
        inputs = [self.dequantize(x), w_dq]
        # the accumulator scale, float64 in fcos: s_in * s_w[c]
        acc_scale = np.float64(s_in) * w_scale.astype(np.float64)
        if "bias" in t:
            b = self.g.const(op.name + "_b", _np(t["bias"]).astype(np.int32).reshape(-1))
            bs = self.g.const(op.name + "_b_scale", acc_scale.astype(np.float32))
            bz = self.g.const(op.name + "_b_zp", np.zeros(w_scale.shape, np.int32))
            inputs.append(self.g.node("DequantizeLinear", [b, bs, bz], op.name + "_b_dq", axis=0))
        kh, kw = int(w_q.shape[2]), int(w_q.shape[3])
        ph, pw = (int(v) for v in a["padding"])
        conv = self.g.node(
            "Conv",
            inputs,
            op.name + "_conv",
            kernel_shape=[kh, kw],
            strides=[int(v) for v in a["stride"]],
            pads=[ph, pw, ph, pw],
            dilations=[int(v) for v in a["dilation"]],
            group=int(a["groups"]),
        )
        if op.dtype == "int32":
            # no requantization: the value is the (dequantized) accumulator itself
            out = self.g.node("Relu", [conv], op.name + "_relu") if a.get("relu") else conv
            self.float_of[op.name] = out
            self.acc_scale[op.name] = acc_scale
            self.dtype[op.name] = "int32"
            return
        self._emit_q(conv, op, relu=bool(a.get("relu")))

    def op_add(self, op: Any) -> None:
        a, b = op.inputs
        if self.integer_requant:
            t = self.tensors
            pa = self.g.node(
                "Mul",
                [self.codes64(a), self._i64(op.name + "_mult_a", _np(t["multiplier_a"]), False)],
                op.name + "_pa",
            )
            pb = self.g.node(
                "Mul",
                [self.codes64(b), self._i64(op.name + "_mult_b", _np(t["multiplier_b"]), False)],
                op.name + "_pb",
            )
            v = self.g.node("Add", [pa, pb], op.name + "_sum")
            self.requant_codes(v, _np(t["shift"]), op, relu=bool(op.attrs.get("relu")))
            return
        s = self.g.node("Add", [self.dequantize(a), self.dequantize(b)], op.name + "_add")
        self._emit_q(s, op, relu=bool(op.attrs.get("relu")))

    def op_requantize(self, op: Any) -> None:
        if self.integer_requant:
            t = self.tensors
            v = self.g.node(
                "Mul",
                [
                    self.codes64(op.inputs[0]),
                    self._i64(op.name + "_mult", _np(t["multiplier"]), True),
                ],
                op.name + "_prod",
            )
            self.requant_codes(v, _np(t["shift"]), op, relu=False)
            return
        self._emit_q(self.dequantize(op.inputs[0]), op, relu=False)

    def op_relu(self, op: Any) -> None:
        x = op.inputs[0]
        if self.dtype[x] != op.dtype or self.scale[x] != _scalar(self.tensors["scale"]):
            raise ExportError(f"{op.name} (relu): output scale/dtype differ from the input's")
        self.relu_codes(x, op.name)
        self.scale[op.name], self.dtype[op.name] = self.scale[x], op.dtype

    def op_max_pool2d(self, op: Any) -> None:
        a = op.attrs
        ph, pw = (int(v) for v in a["padding"])
        y = self.g.node(
            "MaxPool",
            [self.dequantize(op.inputs[0])],
            op.name + "_f",
            kernel_shape=[int(v) for v in a["kernel_size"]],
            strides=[int(v) for v in a["stride"]],
            pads=[ph, pw, ph, pw],
            dilations=[int(v) for v in a["dilation"]],
            ceil_mode=int(bool(a["ceil_mode"])),
        )
        self._emit_q(y, op, relu=False)

    def op_upsample_nearest2d(self, op: Any) -> None:
        a = op.attrs
        x = self.dequantize(op.inputs[0])
        # torch's nearest rule: src = floor(dst * in / out) = ONNX asymmetric + floor. Scales and
        # sizes are given for all four axes: ORT 1.2x's layout optimizer mishandles Resize `axes`
        kwargs = dict(
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"
        )
        if a.get("output_size") is not None:
            hw = self.g.const(
                op.name + "_hw", np.array([int(v) for v in a["output_size"]], np.int64)
            )
            nc = self.g.node("Shape", [x], op.name + "_nc", start=0, end=2)
            sizes = self.g.node("Concat", [nc, hw], op.name + "_sizes", axis=0)
            y = self.g.node("Resize", [x, "", "", sizes], op.name + "_f", **kwargs)
        else:
            factors = a.get("scale_factors")
            if factors is None:
                raise ExportError(
                    f"{op.name} (upsample_nearest2d): neither output_size nor scale_factors is set"
                )
            scales = self.g.const(
                op.name + "_scales", np.array([1.0, 1.0] + [float(v) for v in factors], np.float32)
            )
            y = self.g.node("Resize", [x, "", scales], op.name + "_f", **kwargs)
        self._emit_q(y, op, relu=False)

    def op_cat(self, op: Any) -> None:
        ins = [self.dequantize(v) for v in op.inputs]
        y = self.g.node("Concat", ins, op.name + "_f", axis=int(op.attrs["dim"]))
        self._emit_q(y, op, relu=False)

    # -- driver -----------------------------------------------------------------------------

    def run(self, input_name: str) -> None:
        for rec in self.records:
            op = rec.op
            if op.kind not in SUPPORTED_KINDS:
                raise ExportError(
                    f"{op.name}: integer op kind {op.kind!r} has no ONNX "
                    f"translation (supported: {sorted(SUPPORTED_KINDS)})"
                )
            self.tensors = rec.tensors
            if op.kind == "quantize":
                self.op_quantize(op, input_name)
            else:
                getattr(self, "op_" + op.kind)(op)


def check_program(records: Sequence[Any], opset: int) -> list[tuple[str, str, str]]:
    """``(value name, op kind, reason)`` for every op the exporter cannot express at ``opset``."""
    problems = []
    for rec in records:
        op = rec.op
        where = op.attrs.get("source") or op.name
        if op.kind not in SUPPORTED_KINDS:
            problems.append(
                (
                    where,
                    op.kind,
                    (f"integer op kind {op.kind!r} has no ONNX translation in fcos-plugin-onnx"),
                )
            )
            continue
        if op.dtype == "int16" and opset < MIN_OPSET_INT16:
            problems.append(
                (
                    where,
                    op.kind,
                    (
                        f"int16 QuantizeLinear needs opset >= "
                        f"{MIN_OPSET_INT16}; compile_cfg.opset is {opset}"
                    ),
                )
            )
        if (
            op.kind == "upsample_nearest2d"
            and op.attrs.get("output_size") is None
            and op.attrs.get("scale_factors") is None
        ):
            problems.append((where, op.kind, "upsample without output_size or scale_factors"))
        if op.kind == "max_pool2d" and op.dtype not in ("int8", "int16"):
            problems.append((where, op.kind, f"max-pool of a {op.dtype} tensor"))
    return problems


def build_qdq_model(
    records: Sequence[Any],
    outputs: Sequence[str],
    *,
    input_shape: Sequence[int],
    dequant_output: bool,
    opset: int = 21,
    strides: Sequence[int] | None = None,
    max_logit: bool = False,
    pyramid_input: bool = False,
    uint8_activations: bool = True,
    uint8_weights: bool | None = None,
    requantization: str = "float",
    expose_values: bool = False,
    graph_name: str = "fcos",
) -> ExportedGraph:
    """The QDQ ONNX model of an integer program.

    Args:
        records: :func:`~fcos_core.quantization.integer_model.integer_program` of the model.
        outputs: the integer model's output value names (``IntegerModel.outputs``).
        input_shape: (B, C, H, W) of the example input; the batch becomes dynamic.
        dequant_output: float32 outputs (``DequantizeLinear``) as the integer model returns
            with ``dequant_output``; else the integer codes.
        opset: ONNX opset (>= 18; >= 21 when any tensor is int16).
        strides: FCOS output strides (names the outputs and sizes the max-logit outputs).
        max_logit: append per-stride max class logits (a ``for_compile`` post-process).
        pyramid_input: the input is raw uint8 YUV444 planes [B, 3, H, W]; the graph normalises
            them with ``(x - 128) / 128`` (``DequantizeLinear(x, 1/128, 128)``, exact) before
            the model's input quantization.
        uint8_weights: store the int8 weights as uint8 with zero point 128 (identical values;
            ORT's exact u8 x u8 kernel instead of the saturating u8 x s8 one on x86 without
            VNNI). None: the same as ``uint8_activations``.
        requantization: ``"float"`` (QDQ, see the table) or ``"integer"`` (bit-exact integer
            arithmetic; needs ``uint8_activations``).
        uint8_activations: store int8 activations as uint8 with zero point 128 (identical
            codes, see :meth:`_Builder._qparams`): ONNX Runtime's x86 integer convs take uint8
            activations. False: plain symmetric int8 (zero point 0), as e.g. TensorRT wants.
        expose_values: also output every integer value (named as in the program), for a
            layer-by-layer comparison with ``IntegerModel.run_all``.
    """
    import onnx
    from onnx import helper

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the exporter needs >= {MIN_OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise ExportError(
            f"opset {opset} is newer than the installed onnx package supports "
            f"({onnx.defs.onnx_opset_version()})"
        )
    problems = check_program(records, opset)
    if problems:
        raise ExportError("; ".join(f"{w} ({k}): {r}" for w, k, r in problems))
    if len(input_shape) != 4:
        raise ExportError(f"input_shape must be (B, C, H, W), got {tuple(input_shape)}")
    if uint8_weights is None:
        uint8_weights = uint8_activations
    if requantization not in REQUANTIZATIONS:
        raise ExportError(f"requantization {requantization!r}: use one of {REQUANTIZATIONS}")
    if requantization == "integer" and not uint8_activations:
        raise ExportError(
            "requantization 'integer' needs uint8 activation storage "
            "(ConvInteger's exact uint8 x uint8 kernel)"
        )
    b = _Builder(
        records,
        opset,
        uint8_activations,
        uint8_weights,
        integer_requant=requantization == "integer",
    )
    in_name = "img"
    shape: tuple[Any, ...] = (
        "batch",
        int(input_shape[1]),
        int(input_shape[2]),
        int(input_shape[3]),
    )
    if pyramid_input:
        s, z = (
            b.g.const("pyramid_scale", np.array(1.0 / 128.0, np.float32)),
            b.g.const("pyramid_zp", np.array(128, np.uint8)),
        )
        first = b.g.node("DequantizeLinear", [in_name, s, z], "img_normalised")
        in_type = "uint8"
    else:
        first = in_name
        in_type = "float32"
    b.g.unique(in_name)
    b.run(first)

    names = output_names(len(outputs), strides, max_logit)
    specs: list[OutputSpec] = []
    graph_outputs: list[tuple[str, str]] = []  # (onnx tensor, dtype)
    body_tensors: list[tuple[str, str]] = []
    for i, value in enumerate(outputs):
        name = names[i]
        dtype = b.dtype[value]
        if dtype == "int32":
            acc = b.float_of[value]
            scale = [float(v) for v in b.acc_scale[value]]
            if dequant_output:
                t = b.g.node("Identity", [acc], name, out=name)
                out_dtype = "float32"
            else:  # codes of the accumulator: round(y / (s_in * s_w[c]))
                c = len(scale)
                sc = b.g.const(
                    value + "_acc_scale", b.acc_scale[value].astype(np.float32).reshape(1, c, 1, 1)
                )
                r = b.g.node(
                    "Round", [b.g.node("Div", [acc, sc], value + "_codes_f")], value + "_codes_r"
                )
                t = b.g.node("Cast", [r], name, out=name, to=ONNX_TYPES["int32"])
                out_dtype = "int32"
        else:
            scale = [b.scale[value]]
            if dequant_output:
                s, z = b._qparams(b.scale[value], dtype)
                t = b.g.node("DequantizeLinear", [value, s, z], name, out=name)
                out_dtype = "float32"
            elif b.zero_point(dtype):  # uint8-stored int8 codes -> int8 (exact, same scale)
                s = b.g.const("scale", np.array(b.scale[value], dtype=np.float32))
                z = b.g.const("zp_int8", np.array(0, dtype=np.int8))
                t = b.g.node("QuantizeLinear", [b.dequantize(value), s, z], name, out=name)
                out_dtype = dtype
            else:
                t = b.g.node("Identity", [value], name, out=name)
                out_dtype = dtype
        specs.append(OutputSpec(name=name, value=value, dtype=out_dtype, scale=scale, kind="body"))
        body_tensors.append((t, out_dtype))
        graph_outputs.append((t, out_dtype))
    if max_logit:
        n_strides = len(strides or [])
        if len(outputs) < n_strides:
            raise ExportError("max_logit needs the cls outputs first (an FCOS body)")
        axes = b.g.const("reduce_axes_c", np.array([1], np.int64))
        for k in range(n_strides):
            src, dtype = body_tensors[k]
            name = names[len(outputs) + k]
            if dtype == "int16":  # ReduceMax has no int16 kernel: exact via int32
                wide = b.g.node("Cast", [src], name + "_i32", to=ONNX_TYPES["int32"])
                m = b.g.node("ReduceMax", [wide, axes], name + "_max", keepdims=1)
                t = b.g.node("Cast", [m], name, out=name, to=ONNX_TYPES["int16"])
            else:
                t = b.g.node("ReduceMax", [src, axes], name, out=name, keepdims=1)
            scale = specs[k].scale
            specs.append(
                OutputSpec(
                    name=name,
                    value=specs[k].value,
                    dtype=dtype,
                    scale=scale if len(scale) == 1 else [],
                    kind="max_logit",
                )
            )
            graph_outputs.append((t, dtype))
    exposed: list[OutputSpec] = []
    if expose_values:
        for rec in records:
            v = rec.op.name
            if b.dtype.get(v) in ("int8", "int16") and v not in outputs:
                odt = b.onnx_dtype(b.dtype[v])
                graph_outputs.append((v, odt))
                exposed.append(
                    OutputSpec(
                        name=v,
                        value=v,
                        dtype=odt,
                        scale=[b.scale[v]],
                        kind="value",
                        zero_point=b.zero_point(b.dtype[v]),
                    )
                )

    inputs = [helper.make_tensor_value_info(in_name, ONNX_TYPES[in_type], list(shape))]
    # every output is [B, C, H, W]; shape inference fills in the sizes below
    outs = [helper.make_tensor_value_info(t, ONNX_TYPES[d], [None] * 4) for t, d in graph_outputs]
    graph = helper.make_graph(b.g.nodes, graph_name, inputs, outs, initializer=b.g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fcos-plugin-onnx"
    )
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime >= 1.20 reads
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for out in model.graph.output:
        out.CopyFrom(next(o for o in inferred.graph.output if o.name == out.name))
    return ExportedGraph(
        model=model,
        outputs=tuple(specs),
        input_name=in_name,
        input_dtype=in_type,
        input_shape=shape,
        values=tuple(exposed),
    )
