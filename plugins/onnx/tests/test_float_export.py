"""The one float ONNX exporter (fcos_core.compile.float_onnx), through its function and
through ``fcos export --format onnx``'s writer: same file, dynamic batch, equal to torch eager
under ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_testnets as nets
import onnxruntime as ort
import pytest
import torch

from fcos_core.cli.export_cmd import FORMATS, WRITERS
from fcos_core.compile.float_onnx import FLOAT_ONNX_OPSET, export_float_onnx
from fcos_core.errors import FcosUserError


def float_model() -> torch.nn.Module:
    return nets.randomise_bn(nets.make_fcos(seed=2, train=False, for_compile=True), 2).eval()


def assert_matches_torch(path, model, batch_sizes=(1, 3)):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["img"]
    for n in batch_sizes:  # exported at batch 2: 1 and 3 work only with a dynamic batch
        x = nets.images(n, seed=4 + n)
        outs = sess.run(None, {"img": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert len(outs) == len(ref) == 12
        for o, r in zip(outs, ref):
            assert o.shape[0] == n
            np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_float_export_matches_torch_at_any_batch(tmp_path):
    model = float_model()
    path = export_float_onnx(model, {"img": (1, 3, nets.SIZE, nets.SIZE)}, tmp_path / "f.onnx")
    assert path.is_file() and not list(tmp_path.glob("*.data"))
    assert_matches_torch(path, model)


@pytest.mark.slow
def test_fcos_export_writes_the_same_onnx_as_the_function(tmp_path):
    model = float_model()
    x = torch.randn(1, 3, nets.SIZE, nets.SIZE, generator=torch.Generator().manual_seed(0))
    cli_path = tmp_path / "cli.onnx"
    with torch.no_grad():
        run = WRITERS["onnx"](model, x, cli_path)  # what `fcos export --format onnx` runs
        for got, want in zip(run(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    fn_path = export_float_onnx(model, {"img": x}, tmp_path / "fn.onnx")
    cli, fn = onnx.load(str(cli_path)), onnx.load(str(fn_path))
    for m in (cli, fn):
        assert {o.domain: o.version for o in m.opset_import}[""] == FLOAT_ONNX_OPSET
        batch = m.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")  # symbolic: dynamic batch
    assert [n.op_type for n in cli.graph.node] == [n.op_type for n in fn.graph.node]
    assert [onnx.numpy_helper.to_array(t).tobytes() for t in cli.graph.initializer] == [
        onnx.numpy_helper.to_array(t).tobytes() for t in fn.graph.initializer
    ]
    assert f"opset {FLOAT_ONNX_OPSET}" in FORMATS["onnx"][1]
    assert_matches_torch(cli_path, model)


def test_float_export_refuses_a_quantized_model(trained, tmp_path):
    with pytest.raises(FcosUserError, match="quantized"):
        export_float_onnx(trained["deploy"], {"img": (1, 3, 64, 64)}, tmp_path / "q.onnx")
