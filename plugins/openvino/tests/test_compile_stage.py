"""The real compile stage (fcos_core.engine.compile_stage) with the ``openvino`` backend: the
deploy table checks the artifact through the backend contract alone (load/run) and finds it
bit-exact with the integer model, timed with the threads stated."""

from __future__ import annotations

from types import SimpleNamespace

import onnx_testnets as nets


def test_deploy_table_row_for_openvino(tmp_path, monkeypatch):
    from fcos_core.engine import compile_stage
    from fcos_core.engine.context import RunContext
    from fcos_core.logging_setup import get_logger
    from fcos_plugin_openvino.backend import OpenVinoBackend

    model = nets.quantize(
        nets.randomise_bn(
            nets.make_fcos(seed=0, train=False, for_compile=True, dequant_output=False), 1
        ).eval(),
        [nets.scenes(4, seed=s) for s in (1, 2)],
    )
    monkeypatch.setattr(
        compile_stage, "deploy_model", lambda cfg, ctx: (model, "deploy_model and its pipeline")
    )
    entry = SimpleNamespace(load=lambda: OpenVinoBackend, name="openvino", provider="tests")
    options = {"latency_runs": 0, "threads": 1}
    cfg = SimpleNamespace(
        compile_backend=entry,
        compile_options=options,
        data={"compile_cfg": {"march": "openvino", **options, "timing_runs": 3}},
        node=lambda key: None,
        values={},
    )
    ctx = RunContext(
        stage="compile",
        run_dir=tmp_path / "run",
        ckpt_dir=tmp_path / "ckpt",
        seed=0,
        logger=get_logger("fcos.compile"),
        example_inputs={"img": [1, 3, nets.SIZE, nets.SIZE]},
    )
    out = compile_stage.run_compile_stage(cfg, ctx)
    ref_row, row = out["deploy_table"]["rows"]
    assert ref_row["backend"].startswith("integer model")
    assert row["backend"] == "openvino"
    assert row["within_0"] == row["within_1"] == 1.0 and row["max_steps"] == 0
    assert row["p50_ms"] > 0 and row["threads"] >= 1
    assert (tmp_path / "ckpt" / "compile" / "model.openvino.json").is_file()
