"""The compile stage's deploy table (fcos_core.compile.deploy_table) through the backend contract
alone: a hand-built integer model (int16 and per-channel int32 outputs, the compile
post-process's max logit) and a test backend whose runtime is that model with chosen output
codes moved by chosen steps. Agreement against an independent numpy count, the 0.1 % rule
(error, or warning with allow_disagreement), latency, the CSV and summary record, the config key
and `fcos compile --allow-disagreement`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest
import torch
from torch import nn

from fcos_core.compile.agreement import AgreementTally, code_agreement, disagreement
from fcos_core.compile.backend import CompileBackend, CompileResult
from fcos_core.compile.deploy_table import format_table, output_specs, table_row, write_csv
from fcos_core.errors import FcosUserError
from fcos_core.models.post_process import FCOSMultiStrideFilter
from fcos_core.quantization.integer_model import IntegerModel, IntOp
from fcos_core.schema import arg

SIZE = 16
TINY_CONFIG = Path(__file__).parent / "tiny_pipeline.yaml"  # by path: `conftest` is ambiguous


def _integer_model(seed: int = 0) -> IntegerModel:
    """img -> int8 -> three 3x3 convs: cls (int16, per-tensor scale), box (int16), ctr (int32
    accumulator, per-channel scale)."""
    g = torch.Generator().manual_seed(seed)
    conv = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "relu": False}
    ops = [
        IntOp("q", "quantize", ("img",), "int8"),
        IntOp("cls", "conv2d", ("q",), "int16", dict(conv)),
        IntOp("box", "conv2d", ("q",), "int16", dict(conv)),
        IntOp("ctr", "conv2d", ("q",), "int32", dict(conv)),
    ]

    def conv_tensors(cout: int, out_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "weight": torch.randint(-127, 128, (cout, 3, 3, 3), generator=g, dtype=torch.int8),
            "bias": torch.randint(-2000, 2000, (cout,), generator=g, dtype=torch.int32),
            "multiplier": torch.full((cout,), 1 << 30, dtype=torch.int64),
            "shift": torch.full((cout,), 33, dtype=torch.int64),  # x 1/8
            "scale": out_scale,
            "weight_scale": torch.full((cout,), 0.01),
        }

    tensors = {
        "q": {"scale": torch.tensor(1.0 / 128)},
        "cls": conv_tensors(4, torch.tensor(0.02)),
        "box": conv_tensors(4, torch.tensor(0.05)),
        "ctr": conv_tensors(1, torch.tensor([0.001], dtype=torch.float64)),
    }
    del tensors["ctr"]["multiplier"], tensors["ctr"]["shift"]  # an int32 output has none
    return IntegerModel(ops, tensors, ["cls", "box", "ctr"], dequant_output=False)


class Deploy(nn.Module):
    """A deploy model as the compile stage gets it: integer body + compile post-process."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _integer_model()
        self.post_process = FCOSMultiStrideFilter([8], for_compile=True)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.post_process(self.body(img))


class ShiftingBackend(CompileBackend):
    """A compile backend whose "artifact" runs the deploy model itself and then moves the first
    ``count`` codes of output ``index`` by ``steps`` (options ``shifts: [[index, steps,
    count], ...]``), so its agreement with the integer model is known exactly."""

    name = "shifting"
    models: ClassVar[dict[str, Any]] = {}  # artifact path -> the compiled model
    last: ClassVar[dict[str, Any]] = {}  # the latest run's input and outputs

    def check(self, model: Any, example_inputs: Any) -> list[Any]:
        return []

    def compile(
        self, model: Any, example_inputs: Any, options: Any, out_dir: Path
    ) -> CompileResult:
        path = Path(out_dir) / "shifting.json"
        path.write_text(json.dumps({"shifts": options.get("shifts", [])}))
        ShiftingBackend.models[str(path)] = model
        return CompileResult(artifact=path, report={})

    def load(self, artifact: Path) -> Any:
        shifts = json.loads(Path(artifact).read_text())["shifts"]
        return {"model": ShiftingBackend.models[str(artifact)], "shifts": shifts}

    def run(self, program: Any, inputs: Any) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            outs = [o.numpy().copy() for o in program["model"](inputs["img"])]
        for index, steps, count in program["shifts"]:
            flat = outs[index].reshape(-1)
            flat[:count] += steps
        ShiftingBackend.last = {"inputs": inputs["img"], "outputs": outs}
        return tuple(outs)


@attrs.frozen(kw_only=True)
class ShiftingOptions:
    """compile_cfg of :class:`TypedShiftingBackend`."""

    out_dir: str = arg(help="folder of the artifact")
    shifts: list[list[int]] = arg([], help="[[output index, steps, count], ...]")


class TypedShiftingBackend(ShiftingBackend):
    """:class:`ShiftingBackend` with an options schema: records the options object it gets."""

    options_schema = ShiftingOptions
    received: ClassVar[list[Any]] = []

    def compile(
        self, model: Any, example_inputs: Any, options: ShiftingOptions, out_dir: Path
    ) -> CompileResult:
        TypedShiftingBackend.received.append((options, out_dir))
        path = Path(out_dir) / "shifting.json"
        path.write_text(json.dumps({"shifts": options.shifts}))
        ShiftingBackend.models[str(path)] = model
        return CompileResult(artifact=path, report={})


def _stage(
    tmp_path: Path,
    monkeypatch: Any,
    shifts: list[list[int]],
    backend: type = ShiftingBackend,
    **check: Any,
) -> tuple[Any, dict[str, Any] | None, BaseException | None]:
    """Run the real compile stage with ``backend`` (:class:`ShiftingBackend`) on
    :class:`Deploy`."""
    from fcos_core.engine import compile_stage
    from fcos_core.engine.context import RunContext
    from fcos_core.logging_setup import get_logger

    model = Deploy().eval()
    monkeypatch.setattr(
        compile_stage, "deploy_model", lambda cfg, ctx: (model, "deploy_model and its pipeline")
    )
    entry = SimpleNamespace(load=lambda: backend, name="shifting", provider="tests")
    cfg = SimpleNamespace(
        compile_backend=entry,
        compile_options={"shifts": shifts},
        data={
            "compile_cfg": {
                "march": "shifting",
                "shifts": shifts,
                "timing_runs": 5,
                "timing_warmup": 1,
                **check,
            }
        },
        node=lambda key: None,
        values={},
    )
    ctx = RunContext(
        stage="compile",
        run_dir=tmp_path / "run",
        ckpt_dir=tmp_path / "ckpt",
        seed=0,
        logger=get_logger("fcos.compile"),
        example_inputs={"img": [1, 3, SIZE, SIZE]},
    )
    try:
        return ctx, compile_stage.run_compile_stage(cfg, ctx), None
    except FcosUserError as exc:
        return ctx, None, exc


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _numpy_count(
    reference: tuple[torch.Tensor, ...], candidate: tuple[np.ndarray, ...]
) -> tuple[int, int, int, int]:
    """(elements, equal, within one, largest gap): the integer codes subtracted directly."""
    d = np.concatenate(
        [
            np.abs(r.numpy().astype(np.int64) - c.astype(np.int64)).ravel()
            for r, c in zip(reference, candidate)
        ]
    )
    return d.size, int((d == 0).sum()), int((d <= 1).sum()), int(d.max())


def test_output_specs_name_and_scale_every_output():
    specs = output_specs(Deploy(), 4)
    assert [s["name"] for s in specs] == ["cls_8", "box_8", "ctr_8", "max_logit_8"]
    assert specs[0]["scale"] == pytest.approx([0.02], rel=1e-6)  # float32 scales
    assert specs[1]["scale"] == pytest.approx([0.05], rel=1e-6)
    assert specs[2]["scale"] == [0.001]  # the int32 output's per-channel accumulator scale
    assert specs[3]["scale"] == specs[0]["scale"]  # max over cls: the cls scale
    float_specs = output_specs(nn.Conv2d(3, 3, 1), 2)  # not quantized: nothing in steps
    assert [s["scale"] for s in float_specs] == [[], []]


def test_agreement_against_an_independent_count():
    g = np.random.default_rng(3)
    ref = [
        torch.from_numpy(g.integers(-3000, 3000, (2, 4, 5, 5)).astype(np.int16)),
        torch.from_numpy(g.integers(-(2**20), 2**20, (2, 3, 5, 5)).astype(np.int32)),
    ]
    cand = [r.numpy().copy() for r in ref]
    cand[0].reshape(-1)[:7] += 1
    cand[0].reshape(-1)[10:13] -= 2
    cand[1].reshape(-1)[:4] += 40
    specs = [{"name": "a", "scale": [0.1]}, {"name": "b", "scale": [1e-3, 2e-3, 3e-3]}]
    n, eq, w1, gap = _numpy_count(tuple(ref), tuple(cand))
    got = code_agreement(ref, cand, specs)
    assert got["elements"] == n == 200 + 150
    assert got["within_0"] == pytest.approx(eq / n) and got["within_1"] == pytest.approx(w1 / n)
    assert got["max_steps"] == gap == 40 and got["worst_output"] == "b"
    # dequantized floats (per-channel scale) give the same codes
    deq = [
        ref[0].double() * 0.1,
        ref[1].double() * torch.tensor([1e-3, 2e-3, 3e-3]).reshape(1, 3, 1, 1),
    ]
    assert code_agreement([d.float() for d in deq], cand, specs)["within_0"] == pytest.approx(
        eq / n
    )
    # a tally over two samples counts exactly what one over both counts
    tally = AgreementTally(specs)
    tally.add([r[:1] for r in ref], [c[:1] for c in cand])
    tally.add([r[1:] for r in ref], [c[1:] for c in cand])
    both = tally.result()
    assert both["elements"] == n and both["within_1"] == pytest.approx(w1 / n)
    assert disagreement(both) is not None and "b " in disagreement(both)
    assert disagreement(code_agreement(ref, [r.numpy() for r in ref], specs)) is None


def test_stage_prints_and_stores_one_table(tmp_path, monkeypatch, capsys):
    ctx, out, err = _stage(tmp_path, monkeypatch, [])
    assert err is None
    table = out["deploy_table"]
    assert ctx.summary_extra["deploy_table"] is table
    ref_row, row = table["rows"]
    assert ref_row["backend"] == "integer model (shifting)" and row["backend"] == "shifting"
    assert row["within_0"] == row["within_1"] == 1.0 and row["max_steps"] == 0
    assert table["agreement"]["images"] == 1  # no validation data: the example input
    assert "example input" in row["inputs"]
    for r in (ref_row, row):  # latency: batch 1, timed runs, the threads stated
        assert 0 < r["p50_ms"] <= r["p90_ms"] and r["threads"] >= 1
    assert table["latency"]["runs"] == 5 and table["latency"]["batch"] == 1
    printed = capsys.readouterr().out
    assert "deploy table" in printed and "within-1" in printed and "shifting" in printed
    rows = _read_csv(tmp_path / "run" / "deploy_table.csv")
    assert [r["backend"] for r in rows] == ["integer model (shifting)", "shifting"]
    assert float(rows[1]["within_1"]) == 1.0 and float(rows[1]["p50_ms"]) > 0


def test_stage_hands_the_backend_its_options_object(tmp_path, monkeypatch):
    """The stage resolves compile_cfg once: the backend gets an instance of its schema with the
    config's values (out_dir: <ckpt_dir>/compile), never the core keys."""
    TypedShiftingBackend.received.clear()
    _ctx, out, err = _stage(tmp_path, monkeypatch, [[0, 1, 3]], TypedShiftingBackend)
    assert err is None and out is not None
    ((options, out_dir),) = TypedShiftingBackend.received
    want = tmp_path / "ckpt" / "compile"
    assert options == ShiftingOptions(out_dir=str(want), shifts=[[0, 1, 3]])
    assert out_dir == want and out["out_dir"] == str(want)
    assert out["deploy_table"]["agreement"]["max_steps"] == 1  # the shifts took effect


def test_disagreement_beyond_one_step_fails_the_stage(tmp_path, monkeypatch):
    # cls_8 has 4 x 16 x 16 = 1024 codes; 20 moved by 2 steps, 30 by 1 step
    ctx, out, err = _stage(tmp_path, monkeypatch, [[0, 2, 20], [1, 1, 30]])
    assert out is None and isinstance(err, FcosUserError)
    msg = str(err)
    assert "march shifting" in msg and "cls_8" in msg and "beyond one quantization step" in msg
    assert "allow_disagreement" in err.hint and "--allow-disagreement" in err.hint
    # the table was written for inspection, its figures equal a direct numpy count
    last = ShiftingBackend.last
    with torch.no_grad():
        ref = Deploy().eval()(torch.as_tensor(last["inputs"]))
    n, eq, w1, gap = _numpy_count(ref, last["outputs"])
    row = ctx.summary_extra["deploy_table"]["rows"][1]
    assert ctx.summary_extra["deploy_table"]["agreement"]["elements"] == n
    assert row["within_0"] == pytest.approx(eq / n) and row["within_1"] == pytest.approx(w1 / n)
    assert row["max_steps"] == gap == 2 and row["worst_output"] == "cls_8"
    assert (tmp_path / "run" / "deploy_table.csv").is_file()


def test_allow_disagreement_keeps_the_artifact_with_a_warning(tmp_path, monkeypatch, capsys):
    _, out, err = _stage(tmp_path, monkeypatch, [[0, 2, 20]], allow_disagreement=True)
    assert err is None and out["deploy_table"]["rows"][1]["max_steps"] == 2
    captured = capsys.readouterr()
    assert "allow_disagreement is true" in captured.out + captured.err


def test_one_step_differences_and_a_few_outliers_pass(tmp_path, monkeypatch):
    """Within one step everywhere, or beyond it on <= 0.1 % of the codes: no error."""
    _, out, err = _stage(tmp_path, monkeypatch, [[0, 1, 500], [1, -1, 500]])
    assert err is None and out["deploy_table"]["rows"][1]["within_1"] == 1.0
    # 2560 codes compared (cls, box: 4 x 16 x 16; ctr, max logit: 16 x 16): 2 codes beyond
    # one step are 0.078 %, under the 0.1 % allowed; 3 are 0.117 %, over it
    _, out, err = _stage(tmp_path, monkeypatch, [[1, 5, 2]])
    assert err is None and out["deploy_table"]["agreement"]["elements"] == 2560
    assert out["deploy_table"]["rows"][1]["max_steps"] == 5
    _, out, err = _stage(tmp_path, monkeypatch, [[1, 5, 3]])
    assert isinstance(err, FcosUserError) and "box_8" in str(err)


def test_csv_keeps_other_backends_rows(tmp_path):
    path = tmp_path / "deploy_table.csv"
    lat = {"p50_ms": 1.0, "p90_ms": 2.0, "threads": 1}
    agr = {"elements": 10, "within_0": 1.0, "within_1": 1.0, "max_steps": 0}
    write_csv(
        path,
        [
            table_row("integer model (onnx)", {"mAP": 0.5}, None, lat),
            table_row("onnx", {"mAP": 0.5, "AP50": 0.7}, agr, lat),
        ],
    )
    write_csv(
        path,
        [
            table_row("integer model (nash_e)", {"mAP": 0.5}, None, lat),
            table_row("nash_e", {"mAP": 0.5}, agr, None),
        ],
    )
    write_csv(
        path,
        [
            table_row("integer model (onnx)", {"mAP": 0.25}, None, lat),
            table_row("onnx", {"mAP": 0.25}, agr, lat),
        ],
    )  # onnx compiled again
    rows = _read_csv(path)
    assert [r["backend"] for r in rows] == [
        "integer model (nash_e)",
        "nash_e",
        "integer model (onnx)",
        "onnx",
    ]
    assert float(rows[3]["mAP"]) == 0.25
    text = format_table(
        [
            table_row("integer model (nash_e)", {"mAP": 0.5}, None, lat),
            table_row("nash_e", {"mAP": 0.25}, agr, None),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["backend", "mAP", "AP50"]
    assert "ref" in lines[2] and "0.2500" in lines[3] and lines[3].rstrip().endswith("-")


def test_config_key_for_every_backend_and_the_cli_flag(host, tmp_path):
    """compile_cfg.allow_disagreement is a core key (the stand-in backend's schema does not
    know it); `fcos compile --allow-disagreement` sets it."""
    import engine_standins

    from fcos_core.cli.main import main
    from fcos_core.config import load_config
    from fcos_core.errors import ConfigError
    from fcos_core.plugins import load_host

    cfg = load_config(
        TINY_CONFIG, host, ["compile_cfg.allow_disagreement=true", "compile_cfg.check_images=2"]
    )
    assert "allow_disagreement" not in cfg.compile_options  # not handed to the backend
    with pytest.raises(ConfigError, match="allow_disagreement"):
        load_config(TINY_CONFIG, host, ["compile_cfg.allow_disagreement=[1]"])
    full = load_host(plugins=[("engine_standins", engine_standins)])
    if "compile" not in full.registries["commands"]:
        pytest.skip("fcos compile comes with fcos-plugin-nash-e, not installed")
    run = tmp_path / "run"
    code = main(
        [
            "compile",
            str(TINY_CONFIG),
            f"ckpt_dir={tmp_path / 'ckpt'}",
            "int_infer_trainer=null",
            "--run-dir",
            str(run),
            "--allow-disagreement",
        ],
        host=full,
    )
    assert code == 0
    assert "allow_disagreement: true" in (run / "config.resolved.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    # the stand-in backend has no load/run: the table says so with "-"
    assert summary["compile"]["deploy_table"]["rows"][1]["within_1"] is None


def test_integer_model_mAP_reused_only_from_this_invocations_int_infer(tmp_path, monkeypatch):
    """The int_infer stage's numbers stand for the compiled model only when that stage ran in
    this invocation (same data and input size) and its checkpoint holds the compiled model."""
    import time

    from fcos_core.engine import compile_stage
    from fcos_core.engine.context import RunContext

    model = Deploy().eval()
    ckpt = tmp_path / "int_infer-checkpoint-best.pth.tar"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(
        json.dumps({"int_infer": {"metrics": {"mAP": 0.42}, "checkpoint": str(ckpt)}})
    )
    ctx = RunContext(stage="compile", run_dir=run, ckpt_dir=tmp_path, seed=0)
    cfg = SimpleNamespace(node=lambda key: None, values={})  # no evaluation data
    source = "int_infer_trainer model and model_convert_pipeline"

    monkeypatch.setattr(compile_stage, "_STARTED", 0.0)  # summary.json written since
    got, where = compile_stage.integer_model_metrics(cfg, ctx, source, model)
    assert got == {"mAP": 0.42} and where == "int_infer stage (summary.json)"
    other = Deploy().eval()
    other.body.ops["cls"].bias.add_(1)  # another integer model: not that stage's numbers
    assert compile_stage.integer_model_metrics(cfg, ctx, source, other)[0] is None
    assert compile_stage.integer_model_metrics(cfg, ctx, "deploy_model", model)[0] is None
    monkeypatch.setattr(compile_stage, "_STARTED", time.time() + 60)  # an earlier invocation
    assert compile_stage.integer_model_metrics(cfg, ctx, source, model)[0] is None
