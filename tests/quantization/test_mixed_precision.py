"""Mixed precision per layer (``layer_precision`` rules): parsing, resolution against the
model (no match, conflicts, body outputs), the prepared graph's dtypes, and the bit-exact chain
QAT (eval) == integer model == NASH-E runtime with int16 middle layers; ONNX Runtime within one
step (``requantization: float``) and the onnx checker's refusal of ``requantization: integer``."""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np
import pytest
import torch
from quant_nets import fit_to_teacher, images, make_ctx, make_detector

from fcos_core.errors import FcosUserError
from fcos_core.quantization.converters import (
    Float2Calibration,
    Float2QAT,
    QAT2Quantize,
    freeze_observers,
)
from fcos_core.quantization.observers import MinMaxObserver
from fcos_core.quantization.precision import (
    QuantPoint,
    parse_layer_precision,
    resolve_layer_precision,
    rules_yaml,
)
from fcos_core.quantization.prepare import fake_quants

NECK_INT16 = [{"layers": ["neck.td.*", "re:neck\\.bu\\..+"], "activation": "int16"}]


# -- parsing and resolution (torch-free logic) ---------------------------------------------


def test_parse_accepts_names_globs_regexes_and_a_single_string():
    rules = parse_layer_precision(
        [
            {"layers": "neck.*", "activation": "int16"},
            {"layers": ["re:head\\..*", "a.b"], "weight": "int8"},
        ]
    )
    assert rules[0].layers == ("neck.*",) and rules[0].activation == "int16"
    assert rules[1].layers == ("re:head\\..*", "a.b") and rules[1].weight == "int8"
    assert rules[1].index == 1


@pytest.mark.parametrize(
    "rule, words",
    [
        ({"layers": ["x"], "activation": "float"}, "float layers are not supported"),
        ({"layers": ["x"], "weight": "int16"}, "int16 weights are not supported"),
        ({"layers": ["x"], "activation": "int4"}, "'int4' is not a dtype"),
        ({"layers": [], "activation": "int16"}, "non-empty list"),
        ({"layers": ["re:("], "activation": "int16"}, "not a valid regex"),
        ({"layers": ["x"]}, "neither activation nor weight"),
        ({"layers": ["x"], "activation": "int16", "dtype": "int8"}, "unknown key"),
    ],
)
def test_parse_rejects_bad_rules_with_the_rule_path(rule, words):
    with pytest.raises(FcosUserError) as err:
        parse_layer_precision([rule], where="calibration_trainer.layer_precision")
    assert words in str(err.value) and "calibration_trainer.layer_precision[0]" in str(err.value)


POINTS = [
    QuantPoint("a", ("neck.td.0",), "int8"),
    QuantPoint("b", ("neck.bu.0",), "int8"),
    QuantPoint("c", ("head.cls_convs.0.0", "head.cls_convs.0.2"), "int8"),
    QuantPoint("d", ("head.conv_cls",), "int8", fixed="int16"),
]


def test_resolution_unmatched_pattern_lists_near_names():
    rules = parse_layer_precision([{"layers": ["nek.td.0"], "activation": "int16"}])
    with pytest.raises(FcosUserError) as err:
        resolve_layer_precision(rules, POINTS)
    assert "'nek.td.0' matches no quantizable layer" in str(err.value)
    assert "neck.td.0" in str(err.value)


def test_resolution_reports_conflicts_and_output_contradictions_together():
    rules = parse_layer_precision(
        [
            {"layers": ["neck.*"], "activation": "int16"},
            {"layers": ["neck.bu.0"], "activation": "int8"},
            {"layers": ["head.conv_cls"], "activation": "int8"},
        ]
    )
    with pytest.raises(FcosUserError) as err:
        resolve_layer_precision(rules, POINTS)
    text = str(err.value)
    assert "2 problem(s)" in text
    assert "neck.bu.0: conflicting rules layer_precision[0]" in text
    assert "head.conv_cls is a body output whose dtype is int16" in text


def test_resolution_by_either_name_and_globs_skip_fixed_outputs():
    rules = parse_layer_precision(
        [
            {"layers": ["head.cls_convs.0.2", "neck.td.0"], "activation": "int16"},
            {"layers": ["head.*"], "activation": "int8"},
            {"layers": ["neck.td.0"], "activation": "int16"},
        ]
    )
    with pytest.raises(FcosUserError):  # head.* int8 vs the explicit int16 of cls_convs.0
        resolve_layer_precision(rules, POINTS)
    ok = parse_layer_precision([{"layers": ["head.*", "neck.td.0"], "activation": "int16"}])
    assert resolve_layer_precision(ok, POINTS) == {"a": "int16", "c": "int16", "d": "int16"}
    ok8 = parse_layer_precision([{"layers": ["head.*"], "activation": "int8"}])
    assert resolve_layer_precision(ok8, POINTS) == {"c": "int8"}  # d keeps the head's int16


def test_rules_yaml_round_trips_through_the_parser():
    import yaml

    text = rules_yaml(["neck.td.0", "head.cls_convs.0.2"])
    parsed = parse_layer_precision(yaml.safe_load(text)["layer_precision"])
    assert [r.layers for r in parsed] == [("neck.td.0",), ("head.cls_convs.0.2",)]
    assert all(r.activation == "int16" for r in parsed)


# -- the prepared graph and the converters ---------------------------------------------------


def _act_dtypes(model) -> dict[str, torch.dtype]:
    return {n: fq.dtype for n, fq in fake_quants(model.body) if not fq.is_weight}


def test_converter_rejects_an_unknown_layer_before_any_work():
    with pytest.raises(FcosUserError) as err:
        Float2Calibration(layer_precision=[{"layers": ["neck.tdd"], "activation": "int16"}])(
            make_detector(0), make_ctx()
        )
    assert "nearest: neck.td" in str(err.value)


def test_rules_set_exactly_the_named_layers_to_int16():
    ctx = make_ctx()
    plain = Float2Calibration()(make_detector(0), ctx)
    mixed = Float2Calibration(layer_precision=NECK_INT16)(make_detector(0), ctx)
    set_ = mixed.body.info["layer_dtypes"]
    assert set_ and set(set_.values()) == {"int16"}
    assert all(n.startswith(("neck.td.", "neck.bu.")) for n in set_)
    a, b = _act_dtypes(plain), _act_dtypes(mixed)
    assert a.keys() == b.keys()  # same graph, same state-dict keys: checkpoints interchange
    changed = [n for n in a if a[n] != b[n]]
    assert changed and all(a[n] == torch.int8 and b[n] == torch.int16 for n in changed)
    assert set(plain.state_dict()) == set(mixed.state_dict())


@pytest.fixture(scope="module")
def mixed_flow():
    ctx = make_ctx()
    calibrated = Float2Calibration(activation_observer=MinMaxObserver, layer_precision=NECK_INT16)(
        make_detector(0), ctx
    )
    with torch.no_grad():
        for i in range(3):
            calibrated(images(4, 100 + i))
    freeze_observers(calibrated)
    qat = Float2QAT(layer_precision=NECK_INT16)(make_detector(1), ctx)
    qat.load_state_dict(calibrated.state_dict())
    qat = fit_to_teacher(qat, make_detector(0), 3, 1e-3, seed0=200)
    freeze_observers(qat)
    quantized = QAT2Quantize()(copy.deepcopy(qat), ctx)
    return {"qat": qat, "quantized": quantized, "ctx": ctx}


def test_integer_model_holds_int16_middle_values(mixed_flow):
    q = mixed_flow["quantized"]
    dtypes = {op.name: op.dtype for op in q.body.program}
    sources = {op.name: op.attrs.get("source", "") for op in q.body.program}
    int16_mid = [n for n, d in dtypes.items() if d == "int16" and n not in q.body.outputs]
    assert int16_mid, dtypes
    assert any(dtypes[n] == "int8" for n in dtypes)
    assert all(sources[n] for n in int16_mid)


def test_mixed_qat_eval_equals_the_integer_model_bit_for_bit(mixed_flow):
    qat, q = mixed_flow["qat"], mixed_flow["quantized"]
    x = images(8, 31)
    with torch.no_grad():
        a, b = qat(x), q(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def _int_outputs(q, x):
    body = copy.deepcopy(q.body)
    body.dequant_output = False
    with torch.no_grad():
        return [o.clone() for o in body(x)]


def test_mixed_nash_e_runtime_equals_the_integer_model(mixed_flow, tmp_path):
    pytest.importorskip("fcos_plugin_nash_e")
    from fcos_plugin_nash_e.backend import NashEBackend

    q = copy.deepcopy(mixed_flow["quantized"])
    q.body.dequant_output = False
    backend = NashEBackend()
    x = images(4, 41)
    opts = {
        "name": "mixed",
        "out_dir": str(tmp_path),
        "opt": "O3",
        "hbm": str(tmp_path / "mixed.hbm"),
        "layer_details": False,
        "input_source": ["ddr"],
    }
    assert list(backend.check(q, {"img": torch.zeros(1, 3, 32, 32)})) == []
    result = backend.compile(q, {"img": torch.zeros(1, 3, 32, 32)}, opts, tmp_path)
    prog = backend.load(result.artifact)
    ref = _int_outputs(q, x)
    for i in range(x.shape[0]):
        out = backend.run(prog, {"img": x[i : i + 1]})
        for r, o in zip(ref, out):
            o = np.asarray(o)
            assert o.dtype == np.int16 and np.array_equal(r[i : i + 1].numpy(), o)


def test_mixed_onnx_runtime_within_one_step_and_integer_requant_refused(mixed_flow):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fcos_plugin_onnx")
    import onnxruntime as ort

    from fcos_core.quantization.integer_model import integer_program
    from fcos_plugin_onnx.backend import OnnxBackend
    from fcos_plugin_onnx.qdq_export import build_qdq_model

    q = copy.deepcopy(mixed_flow["quantized"])
    q.body.dequant_output = False
    records = integer_program(q.body)
    example = {"img": torch.zeros(1, 3, 32, 32)}
    issues = OnnxBackend(requantization="integer").check(q, example)
    issues = list(issues)
    assert issues, issues
    for i in issues:
        assert "reads the int16 activation of neck." in i.reason, i
    assert list(OnnxBackend(requantization="float").check(q, example)) == []
    exported = build_qdq_model(
        records,
        q.body.outputs,
        input_shape=(1, 3, 32, 32),
        dequant_output=False,
        requantization="float",
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        exported.model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    x = images(4, 43)
    outs = sess.run(None, {"img": x.numpy()})
    ref = _int_outputs(q, x)
    total = within1 = 0
    for r, o in zip(ref, outs):
        d = np.abs(r.numpy().astype(np.int64) - o.astype(np.int64))
        total += d.size
        within1 += int((d <= 1).sum())
    assert within1 / total >= 0.999, within1 / total


def test_a_backend_can_refuse_layer_dtypes_before_calibration():
    from fcos_core.compile.backend import CheckIssue
    from fcos_core.convert_context import ConvertContext

    class NoInt16:
        name = "no_int16"
        seen: ClassVar[dict[str, str]] = {}

        def quantization_rules(self):
            return None

        def check_layer_precision(self, layer_dtypes):
            NoInt16.seen = dict(layer_dtypes)
            return [
                CheckIssue(n, "conv2d", "int16 is not supported here")
                for n, d in layer_dtypes.items()
                if d == "int16"
            ]

    ctx = ConvertContext(example_inputs={"img": (1, 3, 32, 32)}, backend=NoInt16())
    with pytest.raises(FcosUserError) as err:
        Float2Calibration(layer_precision=NECK_INT16)(make_detector(0), ctx)
    assert "target (no_int16) cannot run" in str(err.value)
    assert all(n in str(err.value) for n in NoInt16.seen)
    assert NoInt16.seen and set(NoInt16.seen.values()) == {"int16"}
    # without rules the backend is not asked
    NoInt16.seen = {}
    Float2Calibration()(make_detector(0), ctx)
    assert NoInt16.seen == {}
