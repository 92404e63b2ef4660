"""Empirical bias correction (fcos_core.quantization.bias_correction): the first conv's bias
moves by the shift computed by hand with torch's own fake-quant ops; after the correction every
conv's channel means in the quantized graph equal the float ones (the shared head convs over
all their pyramid levels); only biases change; the integer model still equals the fake-quant
graph bit for bit; and on near-constant (dark) images the outputs get closer to float."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from quant_nets import images, make_ctx, make_detector, make_small
from torch import fx, nn

from fcos_core.quantization.bias_correction import correct_biases
from fcos_core.quantization.converters import Float2Calibration, QAT2Quantize, freeze_observers
from fcos_core.quantization.fake_quantize import FcosFakeQuantize
from fcos_core.quantization.observers import MinMaxObserver

CONV = torch.ops.aten.conv2d.default


def _calibrated(make, calib):
    model = Float2Calibration(activation_observer=MinMaxObserver)(make(0), make_ctx())
    with torch.no_grad():
        for x in calib:
            model(x)
    freeze_observers(model)
    return model.eval()


def _dark(n, seed):
    """Near-constant images (a dark fluorescence frame): a large mean, a small variation."""
    g = torch.Generator().manual_seed(seed)
    return -0.8 + 0.15 * torch.rand(n, 3, 32, 32, generator=g)


def _gm(model):
    return getattr(model, "body", model).graph_module


class _ConvOutputs(fx.Interpreter):
    """The output of every conv2d node (before a fused ReLU), by node name."""

    def __init__(self, gm):
        super().__init__(gm)
        self.out = {}

    def run_node(self, n):
        value = super().run_node(n)
        if n.op == "call_function" and n.target == CONV:
            self.out[n.name] = value.detach().double()
        return value


def _conv_outputs(model, x, quantized):
    gm = _gm(model)
    fqs = [m for m in gm.modules() if isinstance(m, FcosFakeQuantize)]
    flags = [fq.fake_quant_enabled.clone() for fq in fqs]
    if not quantized:
        for fq in fqs:
            fq.enable_fake_quant(False)
    try:
        with torch.no_grad():
            capture = _ConvOutputs(gm)
            capture.run(x)
    finally:
        for fq, flag in zip(fqs, flags):
            fq.fake_quant_enabled.copy_(flag)
    return capture.out


def _bias_groups(model):
    """{bias parameter name: [conv node names using it]} from the prepared graph."""
    gm = _gm(model)
    groups = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target == CONV and isinstance(n.args[2], fx.Node):
            source = n.args[2].args[0]
            groups.setdefault(str(source.target), []).append(n.name)
    return groups


def _pooled_mean(outs, names):
    total = sum(outs[n].sum((0, 2, 3)) for n in names)
    count = sum(outs[n].numel() // outs[n].shape[1] for n in names)
    return total / count


def _mean_gaps(model, x, floats):
    """Per bias group: max over channels of |quantized mean - float mean|, relative to the RMS
    of the float output (a per-channel std can be ~0: a channel ReLU keeps at 0), the float
    values ``floats`` captured before the correction (it moves the biases the float graph
    shares)."""
    q = _conv_outputs(model, x, True)
    gaps = {}
    for bias, names in _bias_groups(model).items():
        f = torch.cat([floats[n].transpose(0, 1).reshape(floats[n].shape[1], -1) for n in names], 1)
        gap = (_pooled_mean(q, names) - f.mean(1)).abs().max() / f.pow(2).mean().sqrt()
        gaps[bias] = float(gap)
    return gaps


class SharedTower(nn.Module):
    """Two levels through one tower of two convs (no BN: one bias per conv for both levels),
    as the FCOS head's output convs: shared convs that follow one another."""

    def __init__(self) -> None:
        super().__init__()
        self.int16_output, self.int8_output, self.dequant_output = True, False, True
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.relu(self.stem(img))
        return tuple(self.b(F.relu(self.a(level))) for level in (x, F.max_pool2d(x, 2)))


def _make_tower(seed: int) -> SharedTower:
    torch.manual_seed(seed)
    return SharedTower().eval()


def test_first_conv_bias_moves_by_the_hand_computed_shift():
    x = _dark(8, 1)
    model = _calibrated(make_small, [_dark(4, 10 + i) for i in range(3)])
    gm = _gm(model)
    stem = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == CONV)
    weight = gm.get_parameter(str(stem.args[1].args[0].target)).detach().clone()
    w_fq = gm.get_submodule(str(stem.args[1].target))
    bias_name = str(stem.args[2].args[0].target)
    bias = gm.get_parameter(bias_name).detach().clone()
    stride, padding = stem.args[3], stem.args[4]

    # independent: torch's fake-quant ops on the input (int8, fixed scale 1/128) and on the
    # weights (int8 per output channel, the calibrated scales)
    x_q = torch.fake_quantize_per_tensor_affine(x, 1 / 128, 0, -128, 127)
    scale = w_fq.scale.detach().float()
    w_q = torch.fake_quantize_per_channel_affine(
        weight, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -128, 127
    )
    q = F.conv2d(x_q.double(), w_q.double(), None, stride, padding)
    f = F.conv2d(x.double(), weight.double(), None, stride, padding)
    shift = (q - f).mean((0, 2, 3))
    assert shift.abs().max() > 1e-4  # dark images: the rounding does shift the means

    result = correct_biases(model, [x[:4], x[4:]])
    corrected = gm.get_parameter(bias_name).detach()
    # the int32 bias rounding (one accumulator step) is far below this tolerance
    torch.testing.assert_close(corrected.double(), bias.double() - shift, atol=1e-5, rtol=0)
    assert result.images == 8 and result.passes == 1
    assert len(result.corrected) == len(_bias_groups(model))


@pytest.mark.parametrize(
    "make, passes",
    [(make_detector, 1), (_make_tower, 2)],
    ids=["tiny-fcos", "shared-tower"],
)
def test_after_correction_every_conv_mean_equals_float(make, passes):
    calib = [images(4, 100 + i) for i in range(3)]
    x = torch.cat([images(4, 40), _dark(4, 41)])
    model = _calibrated(make, calib)
    floats = _conv_outputs(model, x, False)
    shared = [names for names in _bias_groups(model).values() if len(names) > 1]
    assert shared  # a conv run once per level (the FCOS head's output convs)

    before = _mean_gaps(model, x, floats)
    result = correct_biases(model, [x])
    after = _mean_gaps(model, x, floats)
    assert max(before.values()) > 5e-3  # there was a systematic shift to remove
    assert max(after.values()) < 5e-4, {b: g for b, g in after.items() if g >= 5e-4}
    # shared convs in a row need a pass each: the tower's two, the head's one (parallel)
    assert result.passes == passes
    assert all(s.uses == 2 for s in result.corrected if s.uses > 1)
    assert sum(s.uses for s in result.corrected) == sum(map(len, _bias_groups(model).values()))


def test_only_the_biases_change_and_flags_are_restored():
    model = _calibrated(make_detector, [images(4, 100 + i) for i in range(3)])
    before = copy.deepcopy(model.state_dict())
    gm = _gm(model)
    flags = {n: m.fake_quant_enabled.clone() for n, m in gm.named_modules() if hasattr(m, "scale")}
    model.train()
    correct_biases(model, [images(4, 7)])
    after = model.state_dict()
    assert list(before) == list(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    biases = set(_bias_groups(model))
    assert changed and all(k.split("graph_module.")[-1] in biases for k in changed)
    assert all(m.training for m in model.modules())  # the caller's mode is back
    for n, m in gm.named_modules():
        if n in flags:
            assert torch.equal(m.fake_quant_enabled, flags[n])


def test_integer_model_equals_the_corrected_fake_quant_graph():
    ctx = make_ctx()
    model = _calibrated(make_detector, [images(4, 100 + i) for i in range(3)])
    correct_biases(model, [torch.cat([images(4, 50), _dark(4, 51)])])
    x = torch.cat([images(4, 60), _dark(4, 61)])
    with torch.no_grad():
        fq = [o.clone() for o in model(x)]
        q = QAT2Quantize()(copy.deepcopy(model), ctx)
        for a, b in zip(fq, q(x)):
            assert torch.equal(a, b)


def test_dark_images_get_closer_to_float():
    calib = [_dark(4, 10 + i) for i in range(3)]
    x = _dark(8, 20)
    reference = make_detector(0)
    with torch.no_grad():
        ref = [o.double() for o in reference(x)]

    def error(model):
        with torch.no_grad():
            out = model(x)
        return sum(float(((o.double() - r) ** 2).mean() / (r**2).mean()) for o, r in zip(out, ref))

    model = _calibrated(make_detector, calib)
    plain = error(model)
    correct_biases(model, [_dark(4, 30 + i) for i in range(2)])
    assert error(model) < plain


def test_a_float_model_is_refused():
    with pytest.raises(TypeError, match="calibrated model"):
        correct_biases(make_small(0), [images(2, 0)])
    model = _calibrated(make_small, [images(4, 1)])
    with pytest.raises(ValueError, match="at least one image"):
        correct_biases(model, [])


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.cat([images(n // 2, 70), _dark(n - n // 2, 71)])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"img": self.x[i]}


class _Detector(nn.Module):
    """The tiny FCOS body behind the batch-dict call the calibrator makes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = make_detector(0).body

    def forward(self, batch):
        return self.body(batch["img"] if isinstance(batch, dict) else batch)


def _calibrate(tmp_path, correction_images):
    from fcos_core.engine.calibrator import Calibrator
    from fcos_core.engine.context import RunContext
    from fcos_core.engine.convert_pipeline import ModelConvertPipeline
    from fcos_core.engine.data_loader import DataLoader

    run = tmp_path / f"run{correction_images}"
    calibrator = Calibrator(
        model=_Detector(),
        data_loader=DataLoader(_Images(12), batch_size=4, shuffle=True),
        num_steps=3,
        model_convert_pipeline=ModelConvertPipeline(
            "fuse_bn", [Float2Calibration(activation_observer=MinMaxObserver)]
        ),
        device="cpu",
        bias_correction_images=correction_images,
    )
    ctx = RunContext(
        stage="calibration",
        run_dir=run,
        ckpt_dir=tmp_path,
        seed=0,
        example_inputs={"img": (1, 3, 32, 32)},
    )
    calibrator.run(ctx)
    report = (run / "quant_report_calibration.json").read_text()
    return calibrator.model, json.loads(report)


def test_calibrator_corrects_on_its_first_images_and_reports_against_the_float_model(tmp_path):
    plain, plain_report = _calibrate(tmp_path, 0)
    corrected, report = _calibrate(tmp_path, 6)
    a, b = plain.state_dict(), corrected.state_dict()
    assert list(a) == list(b)
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    biases = set(_bias_groups(corrected))
    assert changed and all(k.split("graph_module.")[-1] in biases for k in changed)
    # the report's float side is the float model before the correction: the same float
    # values (ranges) as the uncorrected calibration's report, layer for layer
    ranges = {layer["name"]: layer["range"] for layer in plain_report["layers"]}
    assert ranges == {layer["name"]: layer["range"] for layer in report["layers"]}


def test_calibrator_refuses_a_negative_image_count():
    from fcos_core.engine.calibrator import Calibrator

    with pytest.raises(ValueError, match="bias_correction_images"):
        Calibrator(model=_Detector(), data_loader=[], num_steps=1, bias_correction_images=-1)
