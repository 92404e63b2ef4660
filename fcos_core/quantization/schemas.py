"""Argument schemas of the quantization converters and observers (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

from fcos_core.schema import arg, component

# fields Float2Calibration and Float2QAT share (their graphs must be prepared alike)


def _qat_mode_field() -> Any:
    return arg(
        None, help="BatchNorm handling (fuse_bn: folded into the conv); null: the pipeline's"
    )


def _integer_exact_field() -> Any:
    return arg(
        "eval",
        help="compute conv/add outputs with the integer model's arithmetic: eval "
        "(validation/prediction equal the deployed model), always (training too), "
        "off (plain fake-quant)",
    )


def _layer_precision_field() -> Any:
    return arg(
        [],
        help="mixed precision: [{layers: [names, globs or re:regex], activation: int8|int16}] "
        "on nn.Module names as the quant report prints them; Float2Calibration and "
        "Float2QAT must carry the same list (docs/quantization.md, 'Mixed precision')",
    )


@attrs.frozen(kw_only=True)
class Float2CalibrationArgs:
    """Prepare the model for calibration: observers record activation ranges, fake-quant on."""

    #: keys of earlier releases -> how to write them now (``{value}``: the config's value)
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "percentile": "activation_observer: {{type: percentile, percentile: {value}}}",
        **{
            k: f"activation_observer: {{{{type: <observer>, {k}: {{value}}}}}}"
            for k in ("histogram_bins", "mse_candidates", "kl_stride")
        },
    }

    activation_observer: Any = component(
        "observers",
        None,
        lazy=True,
        help="activation observer block, e.g. {type: percentile, percentile: 99.99} or a bare "
        "name (mse, minmax, percentile, kl); null: mse with its defaults",
    )
    qat_mode: Literal["fuse_bn"] | None = _qat_mode_field()
    integer_exact: Literal["eval", "always", "off"] = _integer_exact_field()
    layer_precision: list[dict[str, Any]] = _layer_precision_field()  # noqa: RUF009 - an attrs field


@attrs.frozen(kw_only=True)
class Float2QATArgs:
    """Prepare the model for quantization-aware training (fake-quant, tracked ranges)."""

    #: keys of earlier releases -> how to write them now (``{value}``: the config's value)
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "averaging_constant": "qat_observer: {{type: minmax, averaging_constant: {value}}}"
    }

    qat_observer: Any = component(
        "observers",
        None,
        lazy=True,
        help="activation observer block during QAT; null: {type: minmax, averaging_constant: "
        "0.01} (a moving average from the calibrated range)",
    )
    freeze_activation_scales: bool = arg(
        False, help="keep the loaded (calibrated) activation scales fixed during QAT"
    )
    qat_mode: Literal["fuse_bn"] | None = _qat_mode_field()
    integer_exact: Literal["eval", "always", "off"] = _integer_exact_field()
    layer_precision: list[dict[str, Any]] = _layer_precision_field()  # noqa: RUF009 - an attrs field


@attrs.frozen(kw_only=True)
class QAT2QuantizeArgs:
    """Convert a QAT (or calibrated) model into the integer deploy model."""

    dequant_output: bool | None = arg(
        None,
        help="float outputs (true) or integer outputs plus scales (false); null: the "
        "head's dequant_output",
    )
    keep_reference: bool = arg(
        True, help="keep the frozen fake-quant graph for the quantization report"
    )


@attrs.frozen(kw_only=True)
class MinMaxObserverArgs:
    """Observe the true min/max (or their moving average) of activations."""

    averaging_constant: float | None = arg(
        None, help="null: running min/max; else weight of a new batch in a moving average"
    )


@attrs.frozen(kw_only=True)
class PercentileObserverArgs:
    """Clip activations at a percentile of |x| (numpy's linear interpolation)."""

    percentile: float = arg(99.99, help="percentile in (0, 100]")


@attrs.frozen(kw_only=True)
class MSEObserverArgs:
    """Clip activations where the quantization MSE is smallest (histogram search)."""

    bins: int = arg(2048, help="histogram bins")
    num_candidates: int = arg(100, help="clip values tried: hist_max * k / num_candidates")


@attrs.frozen(kw_only=True)
class KLObserverArgs:
    """Clip activations by entropy (KL) calibration on a histogram of |x|."""

    bins: int = arg(2048, help="histogram bins")
    stride: int = arg(1, help="evaluate every stride-th threshold")
