"""The OpenVINO artifact: a JSON manifest next to the IR files it names, and its runtime.

``model.openvino.json`` (the artifact :meth:`~fcos_plugin_openvino.backend.OpenVinoBackend.
compile` returns) records what the IR cannot say by itself: the deploy model's output order and
names, each output's dtype, scale and zero point (to turn outputs back into integer codes), the
input encoding, the FCOS decoding parameters, and the size and SHA-256 of ``model.xml`` and
``model.bin``, so a damaged, truncated or swapped IR file is refused before OpenVINO reads it.

The compiled model runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 support
OpenVINO's default is bf16, which would round the float parts of the graph (dequantized
values around max-pool, resize and concat) and move codes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from fcos_core.atomic_write import write_atomically
from fcos_core.errors import FcosUserError

FORMAT = "fcos-openvino"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
_HINT = "compile again (fcos run CONFIG --stage compile with compile_cfg.march: openvino)"


def ir_paths(manifest: Path) -> tuple[Path, Path]:
    """``<stem>.xml`` and ``<stem>.bin`` next to ``<stem>.openvino.json`` (or ``<stem>.json``)."""
    name = manifest.name
    for suffix in (".openvino.json", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return manifest.with_name(name + ".xml"), manifest.with_name(name + ".bin")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_artifact(manifest: Path, ov_model: Any, meta: dict[str, Any]) -> Path:
    """Save ``ov_model`` as IR (float constants kept in float32: the scales must not be
    rounded to fp16) and the manifest with ``meta`` and the IR files' checksums."""
    import openvino as ov

    xml, bin_ = ir_paths(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    files = {
        "xml": {"name": xml.name, "bytes": xml.stat().st_size, "sha256": _digest(xml)},
        "bin": {"name": bin_.name, "bytes": bin_.stat().st_size, "sha256": _digest(bin_)},
    }
    blob = json.dumps(
        {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files},
        indent=1,
        sort_keys=True,
    ).encode("utf-8")
    return write_atomically(manifest, lambda f: f.write(blob))


def read_manifest(path: str | Path) -> tuple[dict[str, Any], Path, Path]:
    """``(meta, xml, bin)`` of an artifact; a missing, damaged or foreign file, or IR files
    that do not match their checksums, is a :class:`FcosUserError` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise FcosUserError(f"{p}: no such OpenVINO artifact (manifest)", hint=_HINT)
    size = p.stat().st_size
    if size == 0 or size > MAX_MANIFEST_BYTES:
        raise FcosUserError(
            f"{p}: {size} bytes is not an fcos OpenVINO manifest",
            hint="pass the .openvino.json file the openvino backend wrote",
        )
    try:
        meta = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FcosUserError(
            f"{p}: not an fcos OpenVINO manifest (not JSON: {exc})",
            hint="pass the .openvino.json file the openvino backend wrote, not "
            "the .xml/.bin IR files",
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FcosUserError(
            f"{p}: not an fcos OpenVINO manifest (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r})",
            hint="pass the .openvino.json file the openvino backend wrote",
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise FcosUserError(
            f"{p}: manifest version {meta.get('format_version')!r}; this "
            f"plugin reads version {FORMAT_VERSION}",
            hint=_HINT,
        )
    if not isinstance(meta.get("outputs"), list) or not isinstance(meta.get("input"), dict):
        raise FcosUserError(f"{p}: the manifest lacks 'input' or 'outputs' (damaged)", hint=_HINT)
    xml, bin_ = ir_paths(p)
    for key, f in (("xml", xml), ("bin", bin_)):
        want = (meta.get("files") or {}).get(key) or {}
        if not f.is_file():
            raise FcosUserError(f"{f}: the IR file the manifest {p} names is missing", hint=_HINT)
        if f.stat().st_size != want.get("bytes") or _digest(f) != want.get("sha256"):
            raise FcosUserError(
                f"{f}: does not match the checksum in {p} (damaged, truncated or replaced)",
                hint=_HINT,
            )
    return meta, xml, bin_


def preloaded_full_tcmalloc(ld_preload: str | None = None) -> str | None:
    """The full ``libtcmalloc`` (heap profiler/checker) in ``LD_PRELOAD``, if any: OpenVINO's
    runtime aborts the process with ``free(): invalid pointer`` under it (measured with
    Debian's 2.10 and openvino 2026.4), while ``libtcmalloc_minimal`` -- the same allocator,
    what ``make demo`` preloads -- works."""
    value = os.environ.get("LD_PRELOAD", "") if ld_preload is None else ld_preload
    for entry in value.replace(":", " ").split():
        name = os.path.basename(entry)
        if name.startswith("libtcmalloc") and not name.startswith("libtcmalloc_minimal"):
            return entry
    return None


def core() -> Any:
    """An ``openvino.Core``, after refusing the one preload known to abort it (a clear error
    instead of a killed process)."""
    import openvino as ov

    bad = preloaded_full_tcmalloc()
    if bad is not None:
        raise FcosUserError(
            f"OpenVINO aborts under the preloaded {bad} (free(): invalid pointer)",
            hint="preload libtcmalloc_minimal.so.4 instead (Debian libtcmalloc-minimal4; "
            "what `make demo` uses), or run this command without LD_PRELOAD",
        )
    return ov.Core()


def compile_for_cpu(ov_model: Any, threads: int) -> Any:
    """An OpenVINO CompiledModel on the CPU: float32 inference precision (see the module
    doc), one stream, ``threads`` inference threads, tuned for latency."""

    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": int(threads),
    }
    return core().compile_model(ov_model, "CPU", config)


def load_program(path: str | Path, threads: int) -> OpenVinoProgram:
    """Read and verify an artifact and compile it for the CPU."""

    meta, xml, bin_ = read_manifest(path)
    try:
        model = core().read_model(str(xml), str(bin_))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
        raise FcosUserError(
            f"{xml}: OpenVINO cannot read the IR ({str(exc).splitlines()[0]})", hint=_HINT
        ) from None
    names = {n for o in model.outputs for n in o.get_names()}
    missing = [o.get("name") for o in meta["outputs"] if o.get("name") not in names]
    if missing:
        raise FcosUserError(
            f"{path}: the manifest names outputs {missing} the IR does not have", hint=_HINT
        )
    compiled = compile_for_cpu(model, threads)
    return OpenVinoProgram(
        compiled=compiled,
        request=compiled.create_infer_request(),
        meta=meta,
        threading={"threads": int(threads), "device": "CPU", "inference_precision": "f32"},
    )


@attrs.define
class OpenVinoProgram:
    """A loaded artifact: the compiled model, one infer request and the fcos metadata."""

    compiled: Any
    request: Any
    meta: dict[str, Any]
    threading: dict[str, Any]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.meta["outputs"]]

    def feed(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{input name: array}`` from ``{name: tensor or array}`` (a single input may use any
        name), checked against the input the model was exported for."""
        inp = self.meta["input"]
        if inp["name"] in inputs:
            value = inputs[inp["name"]]
        elif len(inputs) == 1:
            value = next(iter(inputs.values()))
        else:
            raise ValueError(f"inputs: expected {inp['name']!r}, got {sorted(inputs)}")
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if inp["dtype"] == "uint8":
            if arr.dtype != np.uint8:
                raise TypeError(
                    f"input {inp['name']!r} is raw uint8 YUV444 planes "
                    f"(input_source pyramid), got {arr.dtype}"
                )
        else:
            arr = arr.astype(np.float32, copy=False)
        if arr.ndim != 4 or list(arr.shape[1:]) != list(inp["shape"][1:]):
            raise ValueError(
                f"input {inp['name']!r}: the model was exported for [B, "
                f"{', '.join(str(v) for v in inp['shape'][1:])}], got "
                f"{list(arr.shape)}"
            )
        return {inp["name"]: np.ascontiguousarray(arr)}

    def run(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        """The deploy model's outputs (tuple, in its order) as numpy arrays (copies: the
        request reuses its buffers)."""
        result = self.request.infer(self.feed(inputs))
        by_name = {n: v for port, v in result.items() for n in port.get_names()}
        return tuple(np.array(by_name[n], copy=True) for n in self.output_names)
