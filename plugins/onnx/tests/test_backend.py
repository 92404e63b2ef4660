"""The ``onnx`` compile backend through its public contract: registration, compile report,
load/run, damaged and foreign files, the checker, threading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_testnets as nets
import pytest
import torch

from fcos_core.compile.backend import CompileBackend
from fcos_core.errors import FcosUserError
from fcos_plugin_onnx.backend import OnnxBackend


@pytest.fixture(scope="module")
def compiled(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_compile")
    backend = OnnxBackend()
    x = trained["batch"]["img"][:2]
    result = backend.compile(
        trained["deploy"],
        {"img": x},
        {"out_dir": str(out), "name": "tiny", "latency_runs": 10, "warmup_runs": 2, "threads": 1},
        out,
    )
    return {"backend": backend, "result": result, "out": out, "x": x}


def test_registered_with_schema_alias_and_command():
    from fcos_core.plugins import load_host
    from fcos_plugin_onnx.schema import OnnxCompileOptions

    host = load_host()
    entry = host.registries["compile_backends"].lookup("onnx")
    assert entry.schema is OnnxCompileOptions
    assert host.registries["compile_backends"].get("ONNX") is entry
    assert entry.distribution == "fcos-plugin-onnx"
    backend = entry.load()()
    assert isinstance(backend, CompileBackend) and backend.name == "onnx"
    assert "onnx-compare" in host.registries["commands"]


def test_registration_modules_do_not_import_torch(fcos_torch_free):
    fcos_torch_free(
        "fcos_plugin_onnx.plugin", "fcos_plugin_onnx.schema", forbidden=("torch", "onnxruntime")
    )


def test_compile_writes_one_onnx_file_and_a_report(compiled):
    res = compiled["result"]
    assert res.artifact == compiled["out"] / "model.onnx" and res.artifact.is_file()
    assert not list(compiled["out"].glob("*.data"))  # weights inside the one file
    r = res.report
    assert r["artifact_bytes"] == res.artifact.stat().st_size
    assert r["march"] == "onnx" and r["opset"] == 21
    assert r["nodes"] == sum(r["nodes_by_op"].values())
    # integer requantization (the default): ConvInteger + int64 multiplier/shift arithmetic
    assert r["requantization"] == "integer"
    assert {
        "QuantizeLinear",
        "DequantizeLinear",
        "ConvInteger",
        "Mul",
        "Mod",
        "Div",
        "Clip",
        "MaxPool",
        "Resize",
        "Concat",
        "ReduceMax",
    } <= set(r["nodes_by_op"])
    assert r["ort_integer_convs"] == r["nodes_by_op"]["ConvInteger"] > 0
    lat = r["latency"]
    assert lat["batch"] == 1 and lat["runs"] == 10 and lat["threads"] == 1
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["max_ms"]
    assert lat["min_ms"] <= lat["mean_ms"] <= lat["max_ms"]
    agr = r["agreement"]
    assert agr["elements"] == sum(p["elements"] for p in agr["per_output"])
    assert agr["within_0"] == 1.0 and agr["max_steps"] == 0  # bit-exact
    on_disk = json.loads(res.files[0].read_text())
    assert res.files[0].name == "tiny_onnx_report.json" and on_disk["nodes"] == r["nodes"]


def test_load_and_run_give_the_deploy_models_output_structure(compiled, trained):
    backend = compiled["backend"]
    program = backend.load(compiled["result"].artifact)
    x = nets.images(3, seed=21)
    outs = backend.run(program, {"img": x})
    with torch.no_grad():
        ref = trained["deploy"](x)
    assert isinstance(outs, tuple) and len(outs) == len(ref) == 12
    for o, r in zip(outs, ref):
        assert isinstance(o, np.ndarray) and o.shape == tuple(r.shape)
        assert o.dtype == np.int16 and r.dtype == torch.int16
    diff = np.concatenate(
        [np.abs(o.astype(np.int64) - r.numpy()).ravel() for o, r in zip(outs, ref)]
    )
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2
    meta = program.meta
    assert meta["detection"]["strides"] == nets.STRIDES and meta["input"]["dtype"] == "float32"
    with pytest.raises(ValueError, match="exported for"):
        backend.run(program, {"img": torch.zeros(1, 3, 32, 32)})


def test_unreadable_damaged_and_foreign_files_are_user_errors(compiled, tmp_path, trained):
    backend = compiled["backend"]
    with pytest.raises(FcosUserError, match="no such ONNX file"):
        backend.load(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(compiled["result"].artifact.read_bytes()[:5000])
    with pytest.raises(FcosUserError, match="damaged ONNX file"):
        backend.load(bad)
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["img"], ["out"])],
        "foreign",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    foreign = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(foreign))
    with pytest.raises(FcosUserError, match="not written by fcos-plugin-onnx") as e:
        backend.load(foreign)
    assert e.value.hint
    from fcos_plugin_onnx.artifact import META_KEY

    tampered = onnx.load(str(compiled["result"].artifact))
    for prop in tampered.metadata_props:
        if prop.key == META_KEY:
            prop.value = prop.value.replace('"name": "cls_8"', '"name": "nope"')
    onnx.save(tampered, str(tmp_path / "t.onnx"))
    with pytest.raises(FcosUserError, match="which the graph does not have"):
        backend.load(tmp_path / "t.onnx")


def test_latency_percentiles_follow_numpy():
    from fcos_plugin_onnx.session import _percentile

    values = sorted(np.random.default_rng(0).uniform(1, 5, 37).tolist())
    for q in (50, 90):
        assert _percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_compile_refuses_a_float_model_and_bad_options(tmp_path, trained):
    backend = OnnxBackend()
    with pytest.raises(FcosUserError, match="not a quantized deploy model"):
        backend.compile(nets.make_fcos(train=False), {"img": (1, 3, 64, 64)}, {}, tmp_path)
    with pytest.raises(FcosUserError, match="not available"):
        backend.compile(
            trained["deploy"],
            {"img": (1, 3, 64, 64)},
            {"providers": ["NoSuchExecutionProvider"]},
            tmp_path,
        )
    with pytest.raises(FcosUserError, match="opset"):
        backend.compile(trained["deploy"], {"img": (1, 3, 64, 64)}, {"opset": 20}, tmp_path)
    with pytest.raises(FcosUserError, match="input_source"):
        backend.compile(
            trained["deploy"], {"img": (1, 3, 64, 64)}, {"input_source": ["ddr", "ddr"]}, tmp_path
        )
    with pytest.raises(FcosUserError, match="requantization: integer needs activation_dtype"):
        backend.compile(
            trained["deploy"], {"img": (1, 3, 64, 64)}, {"activation_dtype": "int8"}, tmp_path
        )


def test_pyramid_compile_reports_agreement_on_uint8_planes(trained, tmp_path):
    backend = OnnxBackend()
    res = backend.compile(
        trained["deploy"],
        {"img": (1, 3, 64, 64)},
        {"input_source": ["pyramid"], "latency_runs": 2, "warmup_runs": 0},
        tmp_path,
    )
    assert res.report["input"]["dtype"] == "uint8" and res.report["input"]["source"] == "pyramid"
    assert res.report["agreement"]["within_2"] == 1.0
    program = backend.load(res.artifact)
    with pytest.raises(TypeError, match="uint8"):
        backend.run(program, {"img": torch.zeros(1, 3, 64, 64)})
    outs = backend.run(program, {"img": torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)})
    assert len(outs) == 12


def test_latency_threading_follows_the_wait_policy(trained, tmp_path, monkeypatch):
    from fcos_plugin_onnx.session import default_threads, spinning_allowed

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not spinning_allowed() and default_threads() == 2
    res = OnnxBackend().compile(
        trained["deploy"],
        {"img": (1, 3, 64, 64)},
        {"latency_runs": 3, "warmup_runs": 0, "agreement_check": False},
        tmp_path,
    )
    lat = res.report["latency"]
    assert lat["spinning"] is False and lat["threads"] == 2 and lat["runs"] == 3
    assert res.report["agreement"] is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert spinning_allowed()


def test_check_names_layers_without_an_integer_form():
    backend = OnnxBackend()
    shape = {"img": (1, 3, 64, 64)}
    assert backend.check(nets.make_fcos(train=False, for_compile=True), shape) == []
    issues = backend.check(nets.make_fcos(train=False, for_compile=True, act="silu"), shape)
    assert [(i.layer, i.op) for i in issues] == [("body.backbone.stages.3.2", "silu")]
    assert "ReLU" in issues[0].reason and "integer op" in issues[0].reason


def test_check_of_a_quantized_model_uses_the_configured_opset(trained):
    assert OnnxBackend().check(trained["deploy"], {"img": (1, 3, 64, 64)}) == []
    issues = OnnxBackend(opset=20).check(trained["deploy"], {"img": (1, 3, 64, 64)})
    assert len(issues) == 9 and all("int16" in i.reason for i in issues)


def test_artifact_path_is_where_compile_writes(compiled):
    out = compiled["out"]
    backend = compiled["backend"]
    assert backend.artifact_path({"out_dir": str(out)}, out) == compiled["result"].artifact
    assert backend.artifact_path({"onnx_file": "/abs/m.onnx"}, out) == Path("/abs/m.onnx")


def test_detect_decodes_like_the_quantized_eval_model(compiled, trained):
    """The compile stage scores the artifact with detect(): ORT's codes (equal to the integer
    model's), dequantized with the artifact's scales and decoded by FCOSMultiStrideFilter,
    give the detections of the quantized model in eval mode (same weights and scales)."""
    backend = compiled["backend"]
    program = backend.load(compiled["result"].artifact)
    x = trained["batch"]["img"][:4]
    got = backend.detect(program, x)
    with torch.no_grad():
        raw = trained["eval_model"](x)  # the body's dequantized outputs, 3 per stride
    # decoded by the model's own post-process, as the Predictor of the quantized stage does
    want = trained["float"].post_process.detect(list(raw), (int(x.shape[2]), int(x.shape[3])))
    assert len(got) == len(want) == 4
    assert sum(len(d["scores"]) for d in got) > 0
    for g, w in zip(got, want):
        assert torch.equal(g["labels"], w["labels"])
        assert torch.allclose(g["boxes"], w["boxes"], atol=1e-4)
        assert torch.allclose(g["scores"], w["scores"], atol=1e-5)


def test_compile_reports_disagreement_and_leaves_the_rule_to_the_stage(
    trained, tmp_path, monkeypatch
):
    """ORT's first output moved by 5 steps: the compile report says so (agreement_ok false,
    the worst output named) and the compile itself succeeds; failing beyond one step on
    more than 0.1 % of the codes is the compile stage's rule for every backend (fcos core,
    tests/engine/test_deploy_table.py and test_compare.py)."""
    import fcos_core.compile.agreement as agreement_mod

    real = agreement_mod.code_agreement

    def shifted(ref, cand, specs):
        cand = list(cand)
        cand[0] = cand[0] + 5
        return real(ref, cand, specs)

    monkeypatch.setattr(agreement_mod, "code_agreement", shifted)
    res = OnnxBackend().compile(
        trained["deploy"], {"img": (1, 3, 64, 64)}, {"latency_runs": 0}, tmp_path
    )
    report = json.loads((tmp_path / "model_onnx_report.json").read_text())
    assert report["agreement_ok"] is False and res.report["agreement_ok"] is False
    assert report["agreement"]["worst_output"] == "cls_8"
    assert report["agreement"]["max_steps"] == 5 and (tmp_path / "model.onnx").is_file()
    # allow_disagreement is fcos core's compile-stage key: dropped from the backend's options
    opts = OnnxBackend().resolve_options({"latency_runs": 0, "allow_disagreement": True}, tmp_path)
    assert not hasattr(opts, "allow_disagreement") and opts.latency_runs == 0
