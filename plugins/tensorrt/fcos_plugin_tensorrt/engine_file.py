"""The artifact: one file holding fcos's metadata and the serialized TensorRT engine.

Layout: the 8-byte magic ``FCOSTRT1``, the metadata length (8 bytes, little endian), the
metadata as UTF-8 JSON, then the engine bytes; the metadata records the engine's length and
SHA-256, so a truncated or altered file is refused before TensorRT sees it. The metadata says
what the engine cannot: the deploy model's output order, names, scales and kinds (from the
QDQ export), the input shape, the FCOS decoding parameters, and the TensorRT version and GPU
it was built for (an engine runs only there).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fcos_core.atomic_write import write_atomically
from fcos_core.errors import FcosUserError

MAGIC = b"FCOSTRT1"
FORMAT_VERSION = 1
MAX_META_BYTES = 1 << 20
#: larger than any engine of an FCOS detector; a bound on what is read into memory
MAX_ENGINE_BYTES = 4 << 30
_HINT = "compile again (fcos run CONFIG --stage compile with compile_cfg.march: tensorrt)"


def write_engine_file(path: Path, engine: bytes, meta: dict[str, Any]) -> Path:
    """Write ``engine`` with ``meta`` atomically (a reader never sees half a file)."""
    meta = dict(
        meta,
        format=FORMAT_VERSION,
        engine_bytes=len(engine),
        engine_sha256=hashlib.sha256(engine).hexdigest(),
    )
    blob = json.dumps(meta, sort_keys=True).encode("utf-8")
    if len(blob) > MAX_META_BYTES:
        raise ValueError(f"engine metadata is {len(blob)} bytes (limit {MAX_META_BYTES})")

    def write(f: Any) -> None:
        f.write(MAGIC)
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        f.write(engine)

    return write_atomically(path, write)


def read_engine_file(path: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """``(engine bytes, metadata)``; a missing, damaged or foreign file is a
    :class:`FcosUserError` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise FcosUserError(f"{p}: no such TensorRT engine file", hint=_HINT)
    size = p.stat().st_size
    if size > MAX_ENGINE_BYTES + MAX_META_BYTES + 16:
        raise FcosUserError(
            f"{p}: {size} bytes is larger than any fcos TensorRT engine",
            hint="pass the .fcos-trt file the tensorrt backend wrote",
        )
    with open(p, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise FcosUserError(
                f"{p}: not an fcos TensorRT engine file (no {MAGIC.decode()} header)",
                hint="pass the .fcos-trt file the tensorrt backend "
                "wrote; a bare TensorRT .engine/.plan has no "
                "fcos metadata",
            )
        n = int.from_bytes(head[8:], "little")
        if n > MAX_META_BYTES:
            raise FcosUserError(
                f"{p}: metadata length {n} is out of range (damaged file)", hint=_HINT
            )
        try:
            meta = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FcosUserError(f"{p}: the metadata is damaged ({exc})", hint=_HINT) from None
        found = meta.get("format") if isinstance(meta, dict) else None
        if found != FORMAT_VERSION:
            raise FcosUserError(
                f"{p}: metadata format {found!r} is not {FORMAT_VERSION}", hint=_HINT
            )
        want = int(meta.get("engine_bytes", -1))
        if not 0 < want <= MAX_ENGINE_BYTES:
            raise FcosUserError(f"{p}: engine length {want} is out of range", hint=_HINT)
        engine = f.read(want + 1)
    if len(engine) != want:
        raise FcosUserError(
            f"{p}: the engine is {len(engine)} bytes, the metadata says {want} "
            "(truncated or appended to)",
            hint=_HINT,
        )
    if hashlib.sha256(engine).hexdigest() != meta.get("engine_sha256"):
        raise FcosUserError(
            f"{p}: the engine's checksum does not match its metadata (damaged file)", hint=_HINT
        )
    return engine, meta
