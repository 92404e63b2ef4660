"""SaveTraced: artifacts that load back and give the same outputs, GraphModules included."""

from __future__ import annotations

import pytest
import torch
from engine_standins import TinyBody

from fcos_core.engine.callbacks.save_traced import SaveTraced


def _body():
    torch.manual_seed(0)
    return TinyBody(channels=4).eval()


@pytest.mark.parametrize("method,suffix", [("jit", "traced.pt"), ("export", "exported.pt2")])
def test_graph_module_round_trip(tmp_path, method, suffix):
    gm = torch.fx.symbolic_trace(_body())
    cb = SaveTraced(save_dir=str(tmp_path), trace_inputs={"img": [2, 3, 16, 16]}, method=method)
    path = cb.save(gm, "int_infer-", torch.device("cpu"))
    assert path.name == f"int_infer-{suffix}"
    x = cb.example_inputs("cpu")["img"]
    loaded = torch.jit.load(str(path)) if method == "jit" else torch.export.load(str(path)).module()
    for a, b in zip(loaded(x), gm(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_pt2e_quantized_model(tmp_path):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.testing.pt2e._xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    x = torch.randn(1, 3, 16, 16)
    exported = torch.export.export(_body(), (x,)).module()
    prepared = prepare_pt2e(
        exported, XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    )
    prepared(x)
    quantized = convert_pt2e(prepared)
    assert isinstance(quantized, torch.fx.GraphModule)
    cb = SaveTraced(save_dir=str(tmp_path), trace_inputs={"img": [1, 3, 16, 16]})
    path = cb.save(quantized, "q-", torch.device("cpu"))
    assert path.is_file()


def test_disagreeing_reload_is_an_error(tmp_path, monkeypatch):
    cb = SaveTraced(save_dir=str(tmp_path), trace_inputs={"img": [1, 3, 8, 8]}, method="export")
    real_load = torch.export.load

    class Wrong:
        def __init__(self, program):
            self.program = program

        def module(self):
            inner = self.program.module()
            return lambda *a, **k: tuple(o + 1 for o in inner(*a, **k))

    monkeypatch.setattr(torch.export, "load", lambda p: Wrong(real_load(p)))
    with pytest.raises(RuntimeError, match="differs from the model"):
        cb.save(_body(), "x-", torch.device("cpu"))


def test_arguments():
    with pytest.raises(ValueError, match="trace_inputs"):
        SaveTraced(save_dir="x", trace_inputs={})
    with pytest.raises(ValueError, match="positive"):
        SaveTraced(save_dir="x", trace_inputs={"img": [1, 0]})
