"""The ``openvino`` compile backend against the contract of fcos_core.compile.backend:
registration (torch- and OpenVINO-free), options, check, compile (IR + manifest + report), load
(damaged or foreign files refused), run (the deploy model's output structure, bit-exact codes)
and detect (decoded like the quantized model's eval mode)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx_testnets as nets
import pytest
import torch

from fcos_core.compile.backend import CompileBackend
from fcos_core.errors import FcosUserError
from fcos_plugin_openvino.backend import OpenVinoBackend


@pytest.fixture(scope="module")
def deploy():
    """An untrained stand-in detector (varied BN statistics) quantized on photo-like scenes:
    a for_compile deploy model (int16 head codes and per-stride max logits)."""
    model = nets.randomise_bn(
        nets.make_fcos(seed=0, train=False, for_compile=True, dequant_output=False), 1
    ).eval()
    return nets.quantize(model, [nets.scenes(4, seed=s) for s in (1, 2)])


@pytest.fixture(scope="module")
def compiled(deploy, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov")
    backend = OpenVinoBackend(threads=1)
    x = nets.scenes(2, seed=5)
    result = backend.compile(
        deploy, {"img": x}, {"latency_runs": 3, "warmup_runs": 1, "name": "standin"}, out
    )
    return {"backend": backend, "result": result, "x": x, "out": out}


def test_registered_with_schema_and_aliases():
    from fcos_core.plugins import load_host
    from fcos_core.registry import KNOWN_PROVIDERS
    from fcos_plugin_openvino.schema import OpenVinoCompileOptions

    reg = load_host().registries["compile_backends"]
    entry = reg.lookup("openvino")
    assert entry.schema is OpenVinoCompileOptions
    assert reg.lookup("OpenVINO").name == "openvino"
    assert issubclass(entry.load(), CompileBackend)
    assert KNOWN_PROVIDERS[("compile_backends", "openvino")] == "fcos-plugin-openvino"


def test_registration_imports_neither_torch_nor_openvino(fcos_torch_free):
    fcos_torch_free(
        "fcos_plugin_openvino",
        "fcos_plugin_openvino.plugin",
        "fcos_plugin_openvino.schema",
        forbidden=("torch", "openvino", "onnx"),
    )


def test_fcos_plugins_lists_the_backend_without_importing_openvino_or_torch():
    probe = (
        "import sys\nfrom fcos_core.cli.main import main\ncode = main(['plugins'])\n"
        "print('LOADED=' + ','.join(m for m in ('torch', 'openvino', 'onnx') "
        "if m in sys.modules))\nsys.exit(code)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fcos-plugin-openvino" in out.stdout and "openvino" in out.stdout
    assert "LOADED=\n" in out.stdout, out.stdout[-300:]


def test_options_defaults_and_errors(tmp_path):
    from fcos_plugin_openvino.schema import OpenVinoCompileOptions

    backend = OpenVinoBackend()
    opts = backend.resolve_options({"march": "openvino"}, tmp_path)
    assert isinstance(opts, OpenVinoCompileOptions)
    assert opts.out_dir == str(tmp_path) and opts.requantization == "integer"
    with pytest.raises(FcosUserError, match="unknown option"):
        backend.resolve_options({"onnx_file": "m.onnx"}, tmp_path)
    with pytest.raises(FcosUserError, match="threads"):
        backend.resolve_options({"threads": 0}, tmp_path)
    with pytest.raises(FcosUserError, match="input_source"):
        backend.resolve_options({"input_source": ["ddr", "pyramid"]}, tmp_path)
    assert (
        OpenVinoBackend().artifact_path({"artifact_file": "a.openvino.json"}, tmp_path)
        == tmp_path / "a.openvino.json"
    )


def test_check_accepts_the_stand_in_and_names_an_op_without_integer_form(deploy):
    backend = OpenVinoBackend()
    assert list(backend.check(deploy, {"img": (1, 3, 64, 64)})) == []
    float_model = nets.make_fcos(train=False, act="silu").eval()
    issues = backend.check(float_model, {"img": (1, 3, 64, 64)})
    assert issues and any("SiLU" in i.op or "silu" in i.render().lower() for i in issues)


def test_compile_writes_ir_manifest_and_report(compiled):
    res = compiled["result"]
    out = compiled["out"]
    assert res.artifact == out / "model.openvino.json"
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    manifest = json.loads(res.artifact.read_text())
    assert manifest["format"] == "fcos-openvino" and manifest["requantization"] == "integer"
    report = json.loads((out / "standin_openvino_report.json").read_text())
    assert report["march"] == "openvino" and report["requantizations_lowered_to_int32"] > 0
    assert "Mod" not in report["onnx_nodes_by_op"]  # no int64 floor left for OpenVINO
    agr = report["agreement"]
    assert agr["elements"] > 0 and agr["within_0"] == 1.0 and report["agreement_ok"] is True
    lat = report["latency"]
    assert lat["runs"] == 3 and lat["p50_ms"] > 0 and lat["threads"] == 1


def test_run_has_the_deploy_models_outputs_bit_for_bit(compiled, deploy):
    backend = compiled["backend"]
    program = backend.load(compiled["result"].artifact)
    x = nets.scenes(3, seed=11)
    got = backend.run(program, {"img": x})
    with torch.no_grad():
        want = deploy(x)
    assert len(got) == len(want) == 12  # cls/box/ctr per stride + the max logits
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape) and g.dtype == w.numpy().dtype
        assert np.array_equal(g, w.numpy())
    with pytest.raises(ValueError, match="exported for"):
        backend.run(program, {"img": torch.zeros(1, 3, 32, 32)})


def _damage(artifact, tmp_path):
    """Copies of a compiled artifact, each damaged in one way."""
    cases = {}
    for name in (
        "missing",
        "foreign",
        "not_json",
        "bin_flipped",
        "bin_truncated",
        "no_xml",
        "other_format",
    ):
        d = tmp_path / name
        d.mkdir()
        for f in artifact.parent.iterdir():
            if f.name.startswith("model."):
                shutil.copy(f, d / f.name)
        cases[name] = d / artifact.name
    cases["missing"].unlink()
    cases["foreign"].write_text(json.dumps({"name": "something else", "outputs": []}))
    cases["not_json"].write_bytes(b"<?xml version='1.0'?><net/>")
    raw = (tmp_path / "bin_flipped" / "model.bin").read_bytes()
    (tmp_path / "bin_flipped" / "model.bin").write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    (tmp_path / "bin_truncated" / "model.bin").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "no_xml" / "model.xml").unlink()
    meta = json.loads(cases["other_format"].read_text())
    meta["format_version"] = 99
    cases["other_format"].write_text(json.dumps(meta))
    return cases


def test_load_refuses_damaged_and_foreign_files(compiled, tmp_path):
    backend = compiled["backend"]
    for name, path in _damage(compiled["result"].artifact, tmp_path).items():
        with pytest.raises(FcosUserError) as err:
            backend.load(path)
        assert str(path.parent) in str(err.value), (name, err.value)
    with pytest.raises(TypeError):
        backend.run(object(), {"img": compiled["x"]})


def test_detect_decodes_like_the_quantized_model(compiled, deploy):
    """detect(): OpenVINO's codes dequantized with the manifest's scales and decoded by
    FCOSMultiStrideFilter give the detections of the quantized model's own outputs decoded
    by its post-process (same weights, scales and decoding parameters)."""
    from fcos_core.models.post_process import FCOSMultiStrideFilter

    backend = compiled["backend"]
    program = backend.load(compiled["result"].artifact)
    x = nets.scenes(2, seed=13)
    got = backend.detect(program, x)
    with torch.no_grad():
        codes = deploy(x)
    meta = program.meta
    floats = [
        (
            c.double() * torch.tensor(o["scale"], dtype=torch.float64).reshape(1, -1, 1, 1)
            if len(o["scale"]) > 1
            else c.double() * o["scale"][0]
        ).float()
        for c, o in zip(codes[:9], meta["outputs"][:9])
    ]
    det = meta["detection"]
    post = FCOSMultiStrideFilter(
        det["strides"],
        threshold=det["threshold"],
        score_threshold=det["score_threshold"],
        iou_threshold=det["iou_threshold"],
        nms_pre=det["nms_pre"],
        max_per_img=det["max_per_img"],
        max_shape=det["max_shape"],
    )
    want = post.detect(floats, (64, 64), bbox_upscaled=det["bbox_upscaled"])
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert set(g) >= {"boxes", "scores", "labels"}
        assert torch.equal(g["labels"], w["labels"])
        assert torch.allclose(g["boxes"], w["boxes"]) and torch.allclose(g["scores"], w["scores"])


def test_pyramid_input_is_bit_exact(deploy, tmp_path):
    backend = OpenVinoBackend(threads=1)
    x = nets.scenes(2, seed=17)
    res = backend.compile(
        deploy, {"img": x}, {"latency_runs": 0, "input_source": ["pyramid"]}, tmp_path
    )
    assert res.report["input"]["dtype"] == "uint8"
    assert res.report["agreement"]["within_0"] == 1.0


@pytest.mark.parametrize(
    "preload, bad",
    [
        ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", True),
        ("/x/libjemalloc.so.2:/usr/lib64/libtcmalloc_and_profiler.so.4", True),
        ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", False),
        ("", False),
    ],
)
def test_the_preload_that_aborts_openvino_is_refused_clearly(monkeypatch, preload, bad):
    # the full libtcmalloc makes OpenVINO abort the process (free(): invalid pointer); the
    # check runs before openvino.Core exists, so the user gets an error instead of a crash
    from fcos_plugin_openvino import artifact

    monkeypatch.setenv("LD_PRELOAD", preload)
    assert (artifact.preloaded_full_tcmalloc() is not None) == bad
    if bad:
        with pytest.raises(FcosUserError, match="free\\(\\): invalid pointer") as exc:
            artifact.core()
        assert "libtcmalloc_minimal" in exc.value.hint
    else:
        assert artifact.core() is not None
