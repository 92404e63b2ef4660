"""The ONNX artifact: one self-contained ``.onnx`` file plus fcos metadata, and its runtime.

The metadata (``metadata_props["fcos_plugin_onnx"]``, JSON) records what the graph cannot say
by itself: the output order and names of the deploy model, each output's dtype, scale and zero
point (to turn outputs back into integer codes), the input encoding (normalised float or raw
pyramid planes), and the FCOS decoding parameters, so an artifact is usable without the config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from fcos_core.errors import FcosUserError

META_KEY = "fcos_plugin_onnx"
FORMAT_VERSION = 1
#: protobuf cannot hold more than 2 GiB in one message; larger files are not ours
MAX_FILE_BYTES = 2**31 - 1
MAX_META_BYTES = 1 << 20


def write_artifact(path: Path, model: Any, meta: dict[str, Any]) -> Path:
    """Save ``model`` (onnx.ModelProto) with ``meta`` as one file (no external data)."""
    import onnx

    blob = json.dumps(meta, sort_keys=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {META_KEY: blob})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def read_artifact(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(onnx.ModelProto, meta)`` of an artifact written by :func:`write_artifact`; a missing,
    damaged or foreign file is a :class:`FcosUserError` naming the path."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise FcosUserError(
            f"{p}: no such ONNX file",
            hint="compile first (fcos compile CONFIG with compile_cfg.march: onnx)",
        )
    size = p.stat().st_size
    if size == 0 or size > MAX_FILE_BYTES:
        raise FcosUserError(
            f"{p}: {size} bytes is not a valid single-file ONNX model", hint="recompile the model"
        )
    try:
        model = onnx.load_model(str(p), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf/checker raise many types
        raise FcosUserError(
            f"{p}: damaged ONNX file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
            hint="recompile the model",
        ) from None
    props = {m.key: m.value for m in model.metadata_props}
    raw = props.get(META_KEY)
    if raw is None:
        raise FcosUserError(
            f"{p}: this ONNX file was not written by fcos-plugin-onnx (no "
            f"'{META_KEY}' metadata), so its output structure is unknown",
            hint="compile the model with compile_cfg.march: onnx, or run "
            "foreign files with onnxruntime directly",
        )
    if len(raw) > MAX_META_BYTES:
        raise FcosUserError(
            f"{p}: fcos metadata of {len(raw)} bytes is implausibly large",
            hint="recompile the model",
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FcosUserError(
            f"{p}: damaged fcos metadata ({exc})", hint="recompile the model"
        ) from None
    _validate_meta(p, meta, model)
    return model, meta


def _validate_meta(p: Path, meta: Any, model: Any) -> None:
    def bad(why: str) -> FcosUserError:
        return FcosUserError(f"{p}: fcos metadata {why}", hint="recompile the model")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise bad(
            f"has format {meta.get('format') if isinstance(meta, dict) else None!r}; "
            f"this plugin reads format {FORMAT_VERSION}"
        )
    outs = meta.get("outputs")
    inp = meta.get("input")
    if not isinstance(outs, list) or not isinstance(inp, dict):
        raise bad("lacks 'input' or 'outputs'")
    graph_outs = {o.name for o in model.graph.output}
    for o in outs:
        if not isinstance(o, dict) or o.get("name") not in graph_outs:
            raise bad(f"names output {o!r}, which the graph does not have")
    if inp.get("name") not in {i.name for i in model.graph.input}:
        raise bad(f"names input {inp.get('name')!r}, which the graph does not have")


@attrs.define
class OnnxProgram:
    """A loaded artifact: the ORT session, the fcos metadata and the threading in use."""

    session: Any
    meta: dict[str, Any]
    threading: dict[str, Any]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.meta["outputs"]]

    def feed(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The ORT feed from ``{name: tensor or array}`` (a single input may use any name)."""
        inp = self.meta["input"]
        if inp["name"] in inputs:
            value = inputs[inp["name"]]
        elif len(inputs) == 1:
            value = next(iter(inputs.values()))
        else:
            raise ValueError(f"inputs: expected {inp['name']!r}, got {sorted(inputs)}")
        arr = to_numpy(value)
        if inp["dtype"] == "uint8":
            if arr.dtype != np.uint8:
                raise TypeError(
                    f"input {inp['name']!r} is raw uint8 YUV444 planes "
                    f"(input_source pyramid), got {arr.dtype}"
                )
        else:
            arr = arr.astype(np.float32, copy=False)
        if arr.ndim != 4:
            raise ValueError(f"input {inp['name']!r}: expected [B, C, H, W], got {arr.shape}")
        want = inp["shape"]
        if list(arr.shape[1:]) != list(want[1:]):
            raise ValueError(
                f"input {inp['name']!r}: the model was exported for [B, "
                f"{', '.join(str(v) for v in want[1:])}], got {list(arr.shape)}"
            )
        return {inp["name"]: np.ascontiguousarray(arr)}

    def run(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """The deploy model's outputs (tuple, in its order) as numpy arrays."""
        return tuple(self.session.run(self.output_names, self.feed(inputs)))


def to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        return value.detach().cpu().numpy()
    return np.asarray(value)
