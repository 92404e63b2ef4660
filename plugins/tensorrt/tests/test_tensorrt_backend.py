"""The ``tensorrt`` compile backend. What needs no GPU runs everywhere (registration, options,
the engine file, the int8-only check, the error without TensorRT); building, running, scoring
and timing an engine run where the ``tensorrt`` package and a CUDA GPU are present and are
skipped with the reason elsewhere (benchmarks/gpu_check.py runs them on a GPU)."""

from __future__ import annotations

import numpy as np
import onnx_testnets as nets
import pytest
import torch

from fcos_core.compile.backend import CompileBackend
from fcos_core.errors import FcosUserError
from fcos_plugin_tensorrt.backend import TensorRTBackend, int8_only_issues
from fcos_plugin_tensorrt.engine_file import MAGIC, read_engine_file, write_engine_file
from fcos_plugin_tensorrt.runtime import tensorrt_missing

#: building and running engines: skipped, with the reason, where TensorRT cannot run
_WHY = tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(_WHY is not None, reason=f"needs TensorRT on a GPU: {_WHY}")


@pytest.fixture(scope="module")
def quantized():
    """Two quantized deploy detectors (for_compile post-process): int8 and int16 head outputs."""
    calib = [nets.images(4, seed=1), nets.images(4, seed=2)]
    out = {}
    for name, int8 in (("int8", True), ("int16", False)):
        float_model = nets.make_fcos(
            train=False,
            for_compile=True,
            dequant_output=False,
            int8_output=int8,
            int16_output=not int8,
        )
        out[name] = nets.quantize(nets.randomise_bn(float_model, 0).eval(), calib)
    return out


def test_registered_with_schema_and_aliases():
    from fcos_core.plugins import load_host
    from fcos_plugin_tensorrt.schema import TensorRTCompileOptions

    host = load_host()
    entry = host.registries["compile_backends"].lookup("tensorrt")
    assert entry.schema is TensorRTCompileOptions
    assert host.registries["compile_backends"].lookup("trt").name == "tensorrt"
    assert issubclass(entry.load(), CompileBackend)


def test_registration_imports_neither_torch_nor_tensorrt(fcos_torch_free):
    fcos_torch_free(
        "fcos_plugin_tensorrt.plugin",
        "fcos_plugin_tensorrt.schema",
        forbidden=("torch", "tensorrt"),
    )


def test_options_defaults_and_errors(tmp_path):
    backend = TensorRTBackend()
    opts = backend.resolve_options({"march": "tensorrt", "name": "m"}, tmp_path)
    assert opts.out_dir == str(tmp_path) and opts.max_batch == 8 and opts.opset == 21
    with pytest.raises(FcosUserError, match="unknown option"):
        backend.resolve_options({"nope": 1}, tmp_path)
    with pytest.raises(FcosUserError, match="opt_batch"):
        backend.resolve_options({"opt_batch": 9, "max_batch": 8}, tmp_path)
    assert (
        TensorRTBackend().artifact_path({"engine_file": "e.fcos-trt"}, tmp_path)
        == tmp_path / "e.fcos-trt"
    )


def test_engine_file_roundtrip_and_damage(tmp_path):
    engine = bytes(range(256)) * 40
    path = write_engine_file(tmp_path / "m.fcos-trt", engine, {"name": "m", "outputs": []})
    got, meta = read_engine_file(path)
    assert got == engine and meta["name"] == "m" and meta["engine_bytes"] == len(engine)
    raw = path.read_bytes()
    cases = {
        "missing": None,
        "foreign": b"\x08\x01plain TensorRT plan" + raw[16:],
        "truncated": raw[:-10],
        "appended": raw + b"x",
        "flipped": raw[:-1] + bytes([raw[-1] ^ 1]),
        "bad_meta": raw[:17] + b"\xff" + raw[18:],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.fcos-trt"
        if blob is not None:
            p.write_bytes(blob)
        with pytest.raises(FcosUserError) as e:
            read_engine_file(p)
        assert str(p) in str(e.value) and e.value.hint, name
    assert raw.startswith(MAGIC)


@pytest.mark.slow
def test_check_wants_int8_outputs_everywhere(quantized):
    backend = TensorRTBackend()
    x = {"img": (1, 3, nets.SIZE, nets.SIZE)}
    assert not [i for i in backend.check(quantized["int8"], x) if "int8 Q/DQ" in i.reason]
    wide = [i for i in backend.check(quantized["int16"], x) if "int8 Q/DQ" in i.reason]
    assert wide and all("int16" in i.reason and "int8_output: true" in i.reason for i in wide)
    # the same rule, counted directly on the integer program
    from fcos_core.quantization.integer_model import integer_program

    records = integer_program(quantized["int16"].body)
    assert len(int8_only_issues(records)) == sum(
        1 for r in records if r.op.kind != "quantize" and r.op.dtype != "int8"
    )
    float_head = nets.make_fcos(train=False, for_compile=True, int16_output=True)
    assert any(i.layer == "head" for i in backend.check(float_head, x))


@pytest.mark.slow
@pytest.mark.skipif(_WHY is None, reason="TensorRT is available here")
def test_compile_without_tensorrt_says_what_to_install(quantized, tmp_path):
    with pytest.raises(FcosUserError) as e:
        TensorRTBackend().compile(
            quantized["int8"],
            {"img": (1, 3, nets.SIZE, nets.SIZE)},
            {"out_dir": str(tmp_path)},
            tmp_path,
        )
    assert "fcos-plugin-tensorrt[tensorrt]" in e.value.hint
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
@needs_tensorrt
def test_engine_builds_runs_agrees_and_detects(quantized, tmp_path):
    backend = TensorRTBackend()
    model = quantized["int8"]
    x = nets.images(2, seed=5)
    result = backend.compile(
        model,
        {"img": x},
        {"out_dir": str(tmp_path), "name": "tiny", "latency_runs": 20, "warmup_runs": 5},
        tmp_path,
    )
    report = result.report
    assert result.artifact.is_file() and report["latency"]["p50_ms"] > 0
    # explicit int8: TensorRT's int8 kernels round like the integer model, up to one step
    assert report["agreement"]["within_1"] >= 0.999, report["agreement"]
    program = backend.load(result.artifact)
    outs = backend.run(program, {"img": x})
    with torch.no_grad():
        ref = model(x)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == tuple(r.shape)
    dets = backend.detect(program, x)
    assert len(dets) == 2 and all(set(d) >= {"boxes", "scores", "labels"} for d in dets)
    assert np.isfinite(outs[0]).all()


@pytest.mark.slow
def test_folding_int32_bias_dequantize_keeps_the_graphs_outputs(quantized):
    """What TensorRT is given computes what the onnx plugin's export computes (ONNX Runtime as
    the reference), with no int32 DequantizeLinear left and only int8 Q/DQ pairs."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from fcos_core.compile.backend import post_process_params
    from fcos_core.quantization.find_integer import find_integer_model
    from fcos_core.quantization.integer_model import integer_program
    from fcos_plugin_onnx.qdq_export import build_qdq_model
    from fcos_plugin_tensorrt.onnx_prep import fold_int32_dequantize

    model = quantized["int8"]
    int_model, post = find_integer_model(model)
    x = nets.images(2, seed=3).numpy()
    exported = build_qdq_model(
        integer_program(int_model),
        int_model.outputs,
        input_shape=x.shape,
        dequant_output=True,
        strides=post_process_params(model)["strides"],
        max_logit=post is not None,
        uint8_activations=False,
    )

    def run(m):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {exported.input_name: x})

    before = run(exported.model)
    assert fold_int32_dequantize(exported.model) > 0
    after = run(exported.model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    inits = {i.name: numpy_helper.to_array(i).dtype for i in exported.model.graph.initializer}
    for node in exported.model.graph.node:
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            src = node.input[0] if node.op_type == "DequantizeLinear" else node.input[2]
            assert inits.get(src, np.dtype("int8")) == np.int8, node.name
