"""``NashEBackend``: the ``nash_e`` compile backend (see :mod:`fcos_core.compile.backend`).

check -> :mod:`.checker` (float models) or the lowering's checks (quantized models);
compile -> :mod:`.lower` + :mod:`.optimize` + :mod:`.perf` + :mod:`.artifact` + :mod:`.report`;
load / run -> :mod:`.artifact` + :mod:`.runtime` (numpy, no torch needed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fcos_core.compile.backend import (
    CheckIssue,
    CompileBackend,
    CompileResult,
    post_process_params,
)
from fcos_plugin_nash_e import __version__
from fcos_plugin_nash_e.artifact import read_artifact, write_artifact
from fcos_plugin_nash_e.ir import Program
from fcos_plugin_nash_e.optimize import optimize
from fcos_plugin_nash_e.perf import estimate
from fcos_plugin_nash_e.report import write_reports
from fcos_plugin_nash_e.runtime import Runtime
from fcos_plugin_nash_e.schema import NashECompileOptions


def _shapes(example_inputs: Mapping[str, Any]) -> dict[str, list[int]]:
    out = {}
    for name, value in example_inputs.items():
        shape = getattr(value, "shape", value)
        out[name] = [int(v) for v in shape]
    return out


def _is_quantized(model: Any) -> bool:
    from fcos_core.quantization.find_integer import find_integer_model

    return find_integer_model(model) is not None


def detection_meta(
    model: Any, program: Program, input_shape: Sequence[int], color: str
) -> dict[str, Any]:
    """What ``fcos infer`` needs to decode the outputs without the config."""
    meta: dict[str, Any] = {
        "input_size": [int(input_shape[2]), int(input_shape[3])],
        "preprocess": {"color": color, "mean": 128.0, "std": 128.0},
    }
    params = post_process_params(model)
    if params is None:
        return meta
    s = len(params["strides"])
    first_cls = program.tensors[program.outputs[0]]
    meta["detection"] = dict(
        params,
        num_classes=int(first_cls.shape[1]),  # the program's, whatever the model says
        layout="cls[S], box[S], ctr[S], max_logit[S]"
        if len(program.outputs) >= 4 * s
        else "cls[S], box[S], ctr[S]",
    )
    return meta


class NashEBackend(CompileBackend[NashECompileOptions]):
    """Integer-only NASH-E-like target: int8/int16 tensors, int32 accumulation, per-channel
    multiplier/shift requantization; see the plugin README for the operator set and limits."""

    name = "nash_e"
    options_schema = NashECompileOptions

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)  # optional defaults for compile()

    def option_defaults(self) -> Mapping[str, Any]:
        return self.options

    def resolve_options(
        self,
        options: NashECompileOptions | Mapping[str, Any] | None = None,
        out_dir: Path | None = None,
    ) -> NashECompileOptions:
        """The base class's resolution, with two fallbacks for API callers (a config must
        set both): ``out_dir`` -> the argument, else the working folder; ``hbm`` ->
        ``<out_dir>/<name>.hbm``."""
        if not isinstance(options, NashECompileOptions):
            merged = {**self.options, **(options or {})}
            where = merged.get("out_dir") or out_dir or "."
            merged["out_dir"] = str(where)
            if not merged.get("hbm"):
                merged["hbm"] = str(Path(where) / f"{merged.get('name') or 'model'}.hbm")
            options = merged
        return super().resolve_options(options, out_dir)

    def quantization_rules(self) -> Any:
        from fcos_core.quantization.rules import QuantRules

        return QuantRules(
            activation_dtype="int8",
            weight_dtype="int8",
            input_dtype="int8",
            input_scale=1.0 / 128.0,
            fuse_relu=True,
            multiplier_bits=31,
            max_shift=62,
        )

    # -- check ---------------------------------------------------------------------------

    def check(self, model: Any, example_inputs: Mapping[str, Any]) -> Sequence[CheckIssue]:
        if _is_quantized(model):
            from fcos_plugin_nash_e.lower import CompileError, lower

            try:
                lower(model, _shapes(example_inputs), ["ddr"])
            except CompileError as exc:
                return exc.issues
            return []
        from fcos_plugin_nash_e.checker import check_float_model

        return check_float_model(model, example_inputs)

    # -- compile -------------------------------------------------------------------------

    def compile(
        self,
        model: Any,
        example_inputs: Mapping[str, Any],
        options: NashECompileOptions,
        out_dir: Path,
    ) -> CompileResult:
        from fcos_plugin_nash_e.lower import lower

        opts = options
        name = opts.name
        level = opts.opt
        sources = list(opts.input_source)
        shapes = _shapes(example_inputs)
        t0 = time.perf_counter()
        canonical = lower(model, shapes, sources, name=name)
        out_dir = Path(opts.out_dir)
        hbm = self.artifact_path(opts, out_dir)
        program = optimize(canonical, level)
        in_shape = next(iter(shapes.values()))
        program.meta.update(detection_meta(model, program, in_shape, opts.input_color))
        program.meta["compiler"] = {"fcos_plugin_nash_e": __version__, "opt": level}
        perf = estimate(program)
        write_artifact(hbm, program, perf if opts.layer_details else None)
        files: list[Path] = []
        if opts.layer_details:
            files.extend(write_reports(perf, out_dir, name))
        report = {
            "artifact": str(hbm),
            "opt": level,
            "ops": len(program.ops),
            "macs": perf["totals"]["macs"],
            "params": perf["totals"]["params"],
            "estimated_latency_ms": perf["totals"]["latency_ms"],
            "estimated_cycles": perf["totals"]["cycles"],
            "artifact_bytes": hbm.stat().st_size,
            "compile_seconds": time.perf_counter() - t0,
        }
        return CompileResult(artifact=hbm, report=report, files=tuple(files))

    def artifact_path(self, options: NashECompileOptions, out_dir: Path) -> Path:
        """``compile_cfg.hbm`` (API callers without one: ``<out_dir>/<name>.hbm``)."""
        return Path(options.hbm)

    # -- execute -------------------------------------------------------------------------

    def load(self, artifact: Path) -> Runtime:
        program, _ = read_artifact(artifact)
        return Runtime(program, validate=False)  # read_artifact validated it

    def run(self, program: Any, inputs: Mapping[str, Any]) -> Any:
        runtime = program if isinstance(program, Runtime) else Runtime(program)
        return runtime.run({k: _to_numpy(v) for k, v in inputs.items()})

    def detect(self, program: Any, images: Any) -> list[dict[str, Any]] | None:
        """Detections of a loaded artifact for normalised images ``[B, 3, H, W]``."""
        import numpy as np

        from fcos_plugin_nash_e.commands import decode_outputs

        runtime = program if isinstance(program, Runtime) else Runtime(program)
        det = runtime.program.meta.get("detection")
        if not det:
            return None
        arr = _to_numpy(images).astype(np.float32)
        inp = runtime.program.inputs[0]
        if inp.source == "pyramid":
            # the normalised image is (yuv - 128) / 128 exactly, so this recovers the frame
            feed: Any = np.clip(np.rint(arr * 128.0 + 128.0), 0, 255).astype(np.uint8)
        else:
            feed = arr
        outputs = runtime.run({inp.name: feed})
        h, w = int(arr.shape[2]), int(arr.shape[3])
        return [
            decode_outputs(runtime, tuple(o[b : b + 1] for o in outputs), det, (h, w), None)
            for b in range(arr.shape[0])
        ]


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        return value.detach().cpu().numpy()
    return value
