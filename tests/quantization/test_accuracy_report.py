"""Accuracy sanity on a small trained net (calibration close to float, QAT recovers) and the
quantization report."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from quant_nets import fit_to_teacher, images, make_ctx, make_small

from fcos_core.quantization.converters import (
    Float2Calibration,
    Float2QAT,
    QAT2Quantize,
    freeze_observers,
)
from fcos_core.quantization.observers import MinMaxObserver
from fcos_core.quantization.report import format_report, quant_report, write_quant_report


def _task_loss(model, teacher, seeds) -> float:
    with torch.no_grad():
        total = 0.0
        for s in seeds:
            x = images(8, s)
            total += float(sum(((o - t) ** 2).mean() for o, t in zip(model(x), teacher(x))))
    return total / len(seeds)


def _fit(model, teacher, steps, lr, seed0):
    return fit_to_teacher(model, teacher, steps, lr, seed0=seed0, batch=8, optimizer="adam")


def _sqnr(ref, out) -> float:
    num = sum(float((r**2).sum()) for r in ref)
    den = sum(float(((o - r) ** 2).sum()) for o, r in zip(out, ref))
    return 10 * math.log10(num / den)


@pytest.fixture(scope="module")
def trained():
    teacher = make_small(5)  # the task: reproduce another net's outputs
    student = _fit(make_small(0), teacher, steps=80, lr=3e-3, seed0=1000)
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    return teacher, student, buf.getvalue()


def test_calibration_is_close_to_float_and_qat_recovers(trained):
    teacher, student, float_ckpt = trained
    ctx = make_ctx()
    val = [900, 901]
    float_loss = _task_loss(student, teacher, val)

    model = make_small(0)
    model.load_state_dict(torch.load(io.BytesIO(float_ckpt), weights_only=True))
    cal = Float2Calibration()(model, ctx)
    with torch.no_grad():
        for i in range(4):
            cal(images(8, 500 + i))
    freeze_observers(cal)
    x = images(8, 902)
    with torch.no_grad():
        sqnr = _sqnr(student(x), cal(x))
    cal_loss = _task_loss(cal, teacher, val)
    print(f"float loss {float_loss:.5f}  calibration loss {cal_loss:.5f}  SQNR {sqnr:.1f} dB")
    assert sqnr > 25.0  # int8 calibration stays close to float
    assert cal_loss < 3 * float_loss + 1e-3

    buf = io.BytesIO()
    torch.save(cal.state_dict(), buf)
    buf.seek(0)
    qat = Float2QAT()(make_small(3), ctx)
    qat.load_state_dict(torch.load(buf, weights_only=True))
    qat = _fit(qat, teacher, steps=40, lr=1e-3, seed0=2000)
    freeze_observers(qat)
    qat_loss = _task_loss(qat, teacher, val)
    quantized = QAT2Quantize()(qat, ctx)
    int_loss = _task_loss(quantized, teacher, val)
    print(f"QAT loss {qat_loss:.5f}  integer model loss {int_loss:.5f}")
    assert qat_loss < cal_loss  # QAT recovers what calibration lost
    assert int_loss == pytest.approx(qat_loss, rel=0.02)


@pytest.fixture(scope="module")
def calibrated():
    ctx = make_ctx()
    cal = Float2Calibration(activation_observer=MinMaxObserver)(make_small(0), ctx)
    with torch.no_grad():
        for i in range(3):
            cal(images(4, 40 + i))
    freeze_observers(cal)
    return cal


def test_report_of_a_calibrated_model(calibrated):
    x = images(4, 50)
    report = quant_report(make_small(0), calibrated, x)
    layers = {r["name"]: r for r in report["layers"]}
    assert len(layers) >= 8
    # the input quantization point: fixed scale, local error computed by hand
    inp = next(r for r in report["layers"] if r["kind"] == "placeholder")
    assert inp["scale"] == 1 / 128
    q = torch.clamp(torch.round(x.double() * 128), -128, 127) / 128
    ref_db = 10 * math.log10(float((x.double() ** 2).sum()) / float(((q - x) ** 2).sum()))
    assert inp["local_sqnr_db"] == pytest.approx(ref_db, rel=1e-6)
    assert inp["sqnr_db"] == pytest.approx(ref_db, rel=1e-6)
    assert inp["clipped"] == pytest.approx(float((x >= 127.5 / 128).double().mean()))
    for r in report["layers"]:
        assert r["range"][0] <= r["range"][1]
        assert r["sqnr_db"] > 10  # the sparse final ReLU map is the weakest (~12 dB)
    worst = report["worst"]
    local = [layers[n]["local_sqnr_db"] for n in worst]
    assert local == sorted(local)
    # the output SQNR equals a direct comparison with the float model
    with torch.no_grad():
        direct = [_sqnr([f], [o]) for f, o in zip(make_small(0)(x), calibrated(x))]
    assert [o["sqnr_db"] for o in report["outputs"]] == pytest.approx(direct, rel=1e-6)
    # the reference the converter graph gives (fake-quant off) agrees with the float model
    self_ref = quant_report(None, calibrated, x)
    assert [o["sqnr_db"] for o in self_ref["outputs"]] == pytest.approx(direct, rel=1e-3)
    text = format_report(report)
    assert "losing most" in text and worst[0][:32] in text


def test_report_of_the_integer_model_and_files(calibrated, tmp_path):
    import copy

    ctx = make_ctx()
    quantized = QAT2Quantize()(copy.deepcopy(calibrated), ctx)
    x = images(4, 51)
    report = quant_report(None, quantized, [x, images(4, 52)])
    assert report["stage"] == "quantized"
    kinds = {r["kind"] for r in report["layers"]}
    assert {"quantize", "conv2d", "add", "max_pool2d"} <= kinds
    assert all(o["sqnr_db"] > 10 for o in report["outputs"])  # a sparse ReLU output: ~15 dB
    path = write_quant_report(quantized, x, tmp_path, "int_infer")
    data = json.loads(Path(path).read_text())
    assert data["stage"] == "int_infer" and data["layers"]
    assert (tmp_path / "quant_report_int_infer.txt").read_text().startswith("quantization report")
