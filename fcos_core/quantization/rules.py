"""Quantization rules: what a target backend accepts (dtypes, fixed input scale, shared scales).

A compile backend returns its rules from ``backend.quantization_rules()``; fcos uses
:data:`DEFAULT_RULES` when no backend is named. The quantizer (which tensors get which dtype and
which observers must be shared) and the integer lowering (requantization multiplier width) read
only this object, so a third-party backend changes the flow by returning different rules.

This module is torch-free: a backend plugin can build its rules without importing torch.
"""

from __future__ import annotations

from typing import Literal

import attrs

#: operations (aten names without overload) that the fcos integer op set can lower
SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "conv2d",
        "relu",
        "add",
        "max_pool2d",
        "upsample_nearest2d",
        "cat",
    }
)


def _check_positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value}")


@attrs.frozen(kw_only=True)
class QuantRules:
    """Dtypes and scale constraints of a deployment target.

    Attributes:
        activation_dtype: integer type of every activation (``int8``).
        weight_dtype: integer type of conv weights; always per-output-channel symmetric.
        input_dtype: integer type of the quantized network input.
        input_scale: fixed scale of the normalised image (HAT: 1/128 for mean 128, std 128),
            not observed.
        output_dtype: dtype of the body's outputs; None lets the head decide
            (``int16_output`` -> int16, ``int8_output`` -> int8, neither -> the int32
            accumulator of the last conv, dequantized with its per-channel scale).
        fuse_relu: quantize a conv's or an add's output after its ReLU (one quantization point)
            instead of before and after it.
        add_inputs_share_scale: force both inputs of an add onto one scale (for targets whose
            add cannot rescale); the default integer add rescales each input itself.
        same_scale_ops: ops whose output is quantized with their input's scale (exact in the
            integer domain: max-pool, nearest upsample, a ReLU that could not be fused).
        shared_input_scale_ops: ops whose inputs (and output) must share one scale (concat).
        multiplier_bits: bits of the unsigned requantization multiplier M (``M < 2**bits``).
        max_shift: largest right shift ``n`` a requantization may use.
        supported_ops: the ops the target can run; a graph with any other op is refused.
    """

    activation_dtype: Literal["int8", "int16"] = attrs.field(default="int8")
    weight_dtype: Literal["int8"] = attrs.field(default="int8")
    input_dtype: Literal["int8", "int16"] = attrs.field(default="int8")
    input_scale: float = attrs.field(default=1.0 / 128.0, validator=_check_positive)
    output_dtype: Literal["int8", "int16", "int32"] | None = attrs.field(default=None)
    fuse_relu: bool = attrs.field(default=True)
    add_inputs_share_scale: bool = attrs.field(default=False)
    same_scale_ops: frozenset[str] = attrs.field(
        default=frozenset({"max_pool2d", "upsample_nearest2d", "relu"}), converter=frozenset
    )
    shared_input_scale_ops: frozenset[str] = attrs.field(
        default=frozenset({"cat"}), converter=frozenset
    )
    multiplier_bits: int = attrs.field(default=31)
    max_shift: int = attrs.field(default=62)
    supported_ops: frozenset[str] = attrs.field(default=SUPPORTED_OPS, converter=frozenset)

    def __attrs_post_init__(self) -> None:
        for name in ("activation_dtype", "input_dtype"):
            if getattr(self, name) not in ("int8", "int16"):
                raise ValueError(f"{name}: must be 'int8' or 'int16', got {getattr(self, name)!r}")
        if self.weight_dtype != "int8":
            raise ValueError(f"weight_dtype: only 'int8' is supported, got {self.weight_dtype!r}")
        if self.output_dtype not in (None, "int8", "int16", "int32"):
            raise ValueError(
                f"output_dtype: must be int8, int16, int32 or None, got {self.output_dtype!r}"
            )
        if not 8 <= self.multiplier_bits <= 31:
            raise ValueError(
                f"multiplier_bits: must be in [8, 31] (int32 multiplier), got "
                f"{self.multiplier_bits}"
            )
        if not 1 <= self.max_shift <= 62:
            raise ValueError(
                f"max_shift: must be in [1, 62] (int64 products), got {self.max_shift}"
            )
        unknown = (
            self.same_scale_ops | self.shared_input_scale_ops | self.supported_ops
        ) - SUPPORTED_OPS
        if unknown:
            raise ValueError(
                f"rules name ops fcos cannot lower: {sorted(unknown)}; supported: "
                f"{sorted(SUPPORTED_OPS)}"
            )


DEFAULT_RULES = QuantRules()


def rules_for(backend: object | None) -> QuantRules:
    """The rules of ``backend`` (``backend.quantization_rules()``) or :data:`DEFAULT_RULES`."""
    if backend is None:
        return DEFAULT_RULES
    get = getattr(backend, "quantization_rules", None)
    if get is None:
        return DEFAULT_RULES
    rules = get()
    if rules is None:
        return DEFAULT_RULES
    if not isinstance(rules, QuantRules):
        raise TypeError(
            f"backend {type(backend).__name__}.quantization_rules() returned "
            f"{type(rules).__name__}; it must return fcos_core.quantization.rules.QuantRules"
        )
    return rules
