"""An observer added by a plugin (tests/quantization/fcos_plugin_scaled_observer: the observer
module and its registration only) is chosen in a calibration config like a built-in one."""

from __future__ import annotations

import sys

import pytest
import torch
from quant_nets import images, make_ctx, make_small

from fcos_core.quantization.converters import freeze_observers
from fcos_core.quantization.prepare import fake_quants
from fcos_core.testing import assert_schema_matches_factory, build_block, make_host

PIPELINE = """\
type: ModelConvertPipeline
qat_mode: fuse_bn
converters:
  - {{type: Float2Calibration, activation_observer: {observer}}}
"""


@pytest.fixture(scope="module")
def host():
    import fcos_plugin_scaled_observer.plugin as plugin

    return make_host(plugins=[("scaled-observer", plugin)])


def calibrated(host, observer: str):
    convert = build_block(host, "converters", PIPELINE.format(observer=observer))
    model = convert(make_small(0), make_ctx())
    with torch.no_grad():
        for i in range(3):
            model(images(4, 100 + i))
    freeze_observers(model)
    return model


def activation_fake_quants(model):
    return [
        fq
        for _, fq in fake_quants(model)
        if not fq.is_weight and type(fq.activation_post_process).__name__ != "FixedRangeObserver"
    ]


def test_registration_imports_no_torch():
    sys.modules.pop("fcos_plugin_scaled_observer.plugin", None)
    sys.modules.pop("fcos_plugin_scaled_observer.observer", None)
    host = make_host(
        plugins=[("scaled-observer", __import__("fcos_plugin_scaled_observer.plugin").plugin)]
    )
    entry = host.registries["observers"].get("scaled_absmax")
    assert entry is not None and entry.plugin == "scaled-observer"
    assert "fcos_plugin_scaled_observer.observer" not in sys.modules


def test_plugin_schema_matches_the_observer(host):
    assert_schema_matches_factory("observers", "scaled_absmax", host=host)


def test_plugin_observer_calibrates_against_minmax(host):
    from fcos_plugin_scaled_observer.observer import ScaledAbsMaxObserver

    ours = activation_fake_quants(calibrated(host, "{type: scaled_absmax, factor: 0.25}"))
    assert ours and all(
        isinstance(fq.activation_post_process, ScaledAbsMaxObserver)
        and fq.activation_post_process.factor == 0.25
        for fq in ours
    )
    # the same tensors observed by the built-in minmax observer: absmax / quant_max each
    ref = activation_fake_quants(calibrated(host, "minmax"))
    assert len(ref) == len(ours)
    for fq, fq_ref in zip(ours, ref):
        expected = (
            (0.25 * fq_ref.activation_post_process.absmax().double() / fq.quant_max)
            .clamp_min(fq.activation_post_process.min_scale)
            .float()
        )
        torch.testing.assert_close(fq.scale.reshape(()), expected, rtol=1e-6, atol=0)


def test_plugin_observer_options_are_validated(host):
    from fcos_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'percentile'"):
        build_block(
            host, "converters", PIPELINE.format(observer="{type: scaled_absmax, percentile: 99.0}")
        )
    with pytest.raises(ConfigError, match="factor: must be in"):
        build_block(
            host, "converters", PIPELINE.format(observer="{type: scaled_absmax, factor: 2.0}")
        )
