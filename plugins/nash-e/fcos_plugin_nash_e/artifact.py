"""The artifact: one versioned file holding a compiled program (fcos's own format).

This is **not** Horizon's ``.hbm`` binary format (which is proprietary); the file only uses the
``.hbm`` path the config names. Layout (all integers little-endian)::

    header (64 bytes)
      0   8  magic            b"FCOSNASH"
      8   2  major version    1   (a reader refuses other majors)
      10  2  minor version    0   (additive changes; readers accept any minor)
      12  4  header size      64
      16  8  file size        total bytes; must equal the real size
      24  4  section count    1..MAX_SECTIONS
      28  4  flags            0
      32  28 reserved         zeros
      60  4  CRC32 of bytes 0..59
    section table (count x 64 bytes), then CRC32 of the table (4 bytes)
      0   4  tag              b"META" | b"PARM" | b"PERF" (ASCII)
      4   4  reserved         zeros
      8   8  offset           from the start of the file, 64-byte aligned
      16  8  length           bytes
      24  4  CRC32            of the section bytes
      28  4  reserved         zeros
      32  32 SHA-256          of the section bytes
    sections, in table order, non-overlapping, inside the file

* ``META`` (required, UTF-8 JSON, <= 16 MiB): the program -- tensors, inputs, ops with their
  attributes, parameter references into ``PARM`` (dtype, shape, offset, byte length), outputs --
  plus model information for decoding (strides, classes, input size, thresholds) and the
  compile options.
* ``PARM`` (required, <= 1 GiB): raw little-endian parameter arrays, each 16-byte aligned.
* ``PERF`` (optional, UTF-8 JSON, <= 16 MiB): the per-layer performance report.

Reading checks, in order, before allocating anything that depends on the file's content: that
the path is a regular file (never a directory, FIFO or device; the open does not block), the
real file size against :data:`MAX_FILE_BYTES` (the read itself is capped too), the header CRC
and fields, the table CRC, each section's bounds, CRC32 and SHA-256, the JSON structure field by
field, every parameter reference against ``PARM`` and the hard limits, then the program's
structure against the target's limits with shapes inferred through every op and the runtime's
memory bounded (:func:`~fcos_plugin_nash_e.ir.validate_program`), and finally the model
information against its schema and the graph (:func:`check_meta`). The checksums only catch
accidents -- anyone can recompute them -- so every one of these checks assumes hostile content.
Any failure, and anything else that escapes decoding, raises :class:`ArtifactError` naming the
file and what is wrong. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fcos_core.atomic_write import write_atomically
from fcos_core.bounded_read import ReadRefused, read_regular_file
from fcos_core.errors import FcosUserError
from fcos_plugin_nash_e.ir import (
    DTYPES,
    MAX_OPS,
    MAX_PARAM_ELEMENTS,
    MAX_TENSORS,
    InputInfo,
    Op,
    Program,
    ProgramError,
    TensorInfo,
    validate_program,
)
from fcos_plugin_nash_e.target import LIMITS

MAGIC = b"FCOSNASH"
MAJOR, MINOR = 1, 0
HEADER_SIZE = 64
ENTRY_SIZE = 64
ALIGN = 64
PARAM_ALIGN = 16
MAX_SECTIONS = 8
MAX_FILE_BYTES = 1 << 30
MAX_JSON_BYTES = 16 << 20
SECTION_LIMITS = {b"META": MAX_JSON_BYTES, b"PARM": MAX_FILE_BYTES, b"PERF": MAX_JSON_BYTES}
REQUIRED = (b"META", b"PARM")
_HEADER = struct.Struct("<8sHHIQII28s")  # 60 bytes, then the CRC32
_ENTRY = struct.Struct("<4s4sQQI4s32s")  # 64 bytes


class ArtifactError(FcosUserError):
    """A damaged, truncated, oversized or foreign artifact file."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(
            f"{path}: not a valid fcos NASH-E artifact: {what}",
            hint="recompile it with `fcos compile CONFIG` (the file may be "
            "truncated, corrupted or from another tool)",
        )
        self.path = str(path)
        self.what = what


# --- writing ------------------------------------------------------------------------------


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def program_to_json(prog: Program) -> tuple[dict[str, Any], bytes]:
    blob = bytearray()
    ops = []
    for op in prog.ops:
        refs = {}
        for key, arr in op.params.items():
            arr = np.ascontiguousarray(arr)
            off = _align(len(blob), PARAM_ALIGN)
            blob.extend(b"\0" * (off - len(blob)))
            data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            blob.extend(data)
            refs[key] = {
                "dtype": str(arr.dtype),
                "shape": list(arr.shape),
                "offset": off,
                "nbytes": len(data),
            }
        ops.append(
            {
                "kind": op.kind,
                "name": op.name,
                "inputs": list(op.inputs),
                "outputs": list(op.outputs),
                "attrs": op.attrs,
                "params": refs,
                "fused": list(op.fused),
            }
        )
    meta = {
        "format": "fcos-nash-e-program",
        "name": prog.name,
        "tensors": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "scale": float(t.scale),
                "zero_point": int(t.zero_point),
            }
            for t in prog.tensors.values()
        ],
        "inputs": [
            {"name": i.name, "tensor": i.tensor, "source": i.source, "shape": list(i.shape)}
            for i in prog.inputs
        ],
        "ops": ops,
        "outputs": list(prog.outputs),
        "meta": prog.meta,
    }
    return meta, bytes(blob)


def pack_artifact(sections: list[tuple[bytes, bytes]]) -> bytes:
    """The container bytes of ``(tag, body)`` sections, in order, with every size, offset and
    checksum computed (what :func:`write_artifact` writes; tests use it to re-seal edits)."""
    table_end = HEADER_SIZE + ENTRY_SIZE * len(sections) + 4
    offset = _align(table_end, ALIGN)
    entries, body = [], bytearray()
    for tag, data in sections:
        if len(data) > SECTION_LIMITS[tag]:
            raise ValueError(f"section {tag.decode()} is {len(data)} bytes, over its limit")
        entries.append(
            _ENTRY.pack(
                tag,
                b"\0" * 4,
                offset,
                len(data),
                zlib.crc32(data),
                b"\0" * 4,
                hashlib.sha256(data).digest(),
            )
        )
        body.extend(b"\0" * (offset - table_end - len(body)))
        body.extend(data)
        offset = _align(offset + len(data), ALIGN)
    size = table_end + len(body)
    head = _HEADER.pack(MAGIC, MAJOR, MINOR, HEADER_SIZE, size, len(sections), 0, b"\0" * 28)
    table = b"".join(entries)
    return (
        head
        + struct.pack("<I", zlib.crc32(head))
        + table
        + struct.pack("<I", zlib.crc32(table))
        + bytes(body)
    )


def write_artifact(path: Path | str, prog: Program, perf: dict[str, Any] | None = None) -> Path:
    """Serialise ``prog`` (and the optional per-layer report) to ``path`` atomically."""
    validate_program(prog)
    meta, params = program_to_json(prog)
    sections = [
        (b"META", json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()),
        (b"PARM", params),
    ]
    if perf is not None:
        sections.append((b"PERF", json.dumps(perf, separators=(",", ":")).encode()))
    out = pack_artifact(sections)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, out)
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`fcos_core.atomic_write.write_atomically`:
    a unique fsynced temporary file renamed over ``path``, removed on any failure)."""
    write_atomically(path, lambda f: f.write(data))


# --- reading ------------------------------------------------------------------------------


def _read_file(path: Path) -> bytes:
    """The bytes of the regular file ``path``, at most :data:`MAX_FILE_BYTES` of them
    (:func:`fcos_core.bounded_read.read_regular_file`: a directory, FIFO or device is refused
    before it is opened, the open does not block, the read is capped whatever ``stat`` said)."""
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except ReadRefused as why:
        if why.kind == "missing":
            raise FcosUserError(
                f"{path}: cannot read the artifact: No such file or directory",
                hint="check the path (compile_cfg.hbm)",
            ) from None
        if why.kind == "unreadable":
            raise FcosUserError(
                f"{path}: cannot read the artifact: {why.detail}",
                hint="check the path and its permissions",
            ) from None
        if why.kind == "directory":
            raise ArtifactError(path, "it is a directory, not an artifact file") from None
        if why.kind == "not_regular":
            raise ArtifactError(
                path, "it is not a regular file (a FIFO, socket or device)"
            ) from None
        raise ArtifactError(
            path, f"file is over the {MAX_FILE_BYTES}-byte limit ({why.detail})"
        ) from None


def read_sections(path: Path | str, data: bytes | None = None) -> dict[bytes, bytes]:
    """The verified sections of an artifact (``data``: its bytes, already read)."""
    path = Path(path)
    if data is None:
        data = _read_file(path)
    if len(data) > MAX_FILE_BYTES:
        raise ArtifactError(path, "file is over the size limit")
    if len(data) < HEADER_SIZE:
        raise ArtifactError(
            path,
            f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header (truncated?)",
        )
    magic, major, minor, hsize, fsize, count, flags, reserved = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError(
            path,
            f"bad magic {magic!r} (expected {MAGIC!r}); this is not an "
            "fcos artifact (Horizon .hbm files are not supported)",
        )
    (crc,) = struct.unpack_from("<I", data, 60)
    if crc != zlib.crc32(data[:60]):
        raise ArtifactError(path, "header checksum mismatch (corrupted header)")
    if major != MAJOR:
        raise ArtifactError(
            path, f"format version {major}.{minor}; this fcos reads version {MAJOR}.x"
        )
    if hsize != HEADER_SIZE or flags != 0 or reserved != b"\0" * 28:
        raise ArtifactError(path, "unsupported header fields")
    if fsize != len(data):
        raise ArtifactError(
            path,
            f"header says {fsize} bytes but the file has {len(data)} (truncated or appended to)",
        )
    if not 1 <= count <= MAX_SECTIONS:
        raise ArtifactError(path, f"section count {count} outside 1..{MAX_SECTIONS}")
    table_end = HEADER_SIZE + ENTRY_SIZE * count + 4
    if table_end > len(data):
        raise ArtifactError(path, "section table runs past the end of the file")
    table = data[HEADER_SIZE : table_end - 4]
    (tcrc,) = struct.unpack_from("<I", data, table_end - 4)
    if tcrc != zlib.crc32(table):
        raise ArtifactError(path, "section table checksum mismatch")
    sections: dict[bytes, bytes] = {}
    last_end = table_end
    for k in range(count):
        tag, res1, off, length, scrc, res2, sha = _ENTRY.unpack_from(table, k * ENTRY_SIZE)
        name = tag.decode("ascii", "replace")
        if tag not in SECTION_LIMITS:
            raise ArtifactError(path, f"unknown section {name!r}")
        if tag in sections:
            raise ArtifactError(path, f"section {name} appears twice")
        if res1 != b"\0" * 4 or res2 != b"\0" * 4:
            raise ArtifactError(path, f"section {name}: reserved fields are not zero")
        if length > SECTION_LIMITS[tag]:
            raise ArtifactError(
                path, f"section {name} is {length} bytes, over its limit {SECTION_LIMITS[tag]}"
            )
        if off % ALIGN or off < last_end or off + length > len(data):
            raise ArtifactError(
                path,
                f"section {name} at offset {off} (+{length} bytes) is "
                "misplaced or runs past the end of the file",
            )
        gap = data[last_end:off]
        if len(gap) >= ALIGN or gap.count(0) != len(gap):
            raise ArtifactError(
                path,
                f"unexpected bytes before section {name} (only zero "
                "alignment padding may sit between sections)",
            )
        body = data[off : off + length]
        if zlib.crc32(body) != scrc:
            raise ArtifactError(path, f"section {name}: CRC32 mismatch (corrupted data)")
        if hashlib.sha256(body).digest() != sha:
            raise ArtifactError(path, f"section {name}: SHA-256 mismatch (corrupted data)")
        sections[tag] = body
        last_end = off + length
    if last_end != len(data):
        raise ArtifactError(path, f"{len(data) - last_end} unexpected bytes after the last section")
    for tag in REQUIRED:
        if tag not in sections:
            raise ArtifactError(path, f"required section {tag.decode()} is missing")
    return sections


def _json(path: Path, body: bytes, name: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(path, f"section {name} is not valid JSON: {exc}") from None


class _Reader:
    """Strict field access on decoded JSON: every wrong type becomes an ArtifactError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, what: str) -> ArtifactError:
        return ArtifactError(self.path, what)

    def get(self, obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise self.fail(f"{where}: missing field {key!r}")
        v = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds:
            raise self.fail(f"{where}.{key}: wrong type bool")
        if not isinstance(v, kinds):
            raise self.fail(
                f"{where}.{key}: expected {'/'.join(k.__name__ for k in kinds)}, "
                f"got {type(v).__name__}"
            )
        return v

    def int_list(self, obj: Any, key: str, where: str, max_len: int = 8) -> tuple[int, ...]:
        v = self.get(obj, key, list, where)
        if len(v) > max_len or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise self.fail(f"{where}.{key}: expected at most {max_len} integers")
        return tuple(v)

    def number(self, obj: Any, key: str, where: str) -> float:
        """A finite JSON number as a float (huge integers and NaN/Infinity are refused)."""
        v = self.get(obj, key, (int, float), where)
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise self.fail(f"{where}.{key}: {str(v)[:40]} is not a finite number")
        return f

    def str_list(self, obj: Any, key: str, where: str, max_len: int) -> list[str]:
        v = self.get(obj, key, list, where)
        if len(v) > max_len or not all(isinstance(x, str) for x in v):
            raise self.fail(f"{where}.{key}: expected a list of at most {max_len} names")
        return list(v)


def _param(rd: _Reader, ref: Any, parm: bytes, where: str) -> np.ndarray:
    dtype = rd.get(ref, "dtype", str, where)
    if dtype not in DTYPES:
        raise rd.fail(f"{where}: unknown dtype {dtype!r}")
    shape = rd.int_list(ref, "shape", where, max_len=4)
    off = rd.get(ref, "offset", int, where)
    nbytes = rd.get(ref, "nbytes", int, where)
    if any(d < 0 for d in shape):
        raise rd.fail(f"{where}: negative dimension in {shape}")
    elems = 1
    for d in shape:
        elems *= d
    if elems > MAX_PARAM_ELEMENTS:
        raise rd.fail(f"{where}: {elems} elements exceed the limit {MAX_PARAM_ELEMENTS}")
    itemsize = DTYPES[dtype].itemsize
    if nbytes != elems * itemsize:
        raise rd.fail(f"{where}: {nbytes} bytes do not hold {dtype} {list(shape)}")
    if off < 0 or off % PARAM_ALIGN or off + nbytes > len(parm):
        raise rd.fail(f"{where}: bytes {off}..{off + nbytes} lie outside PARM ({len(parm)} bytes)")
    arr = np.frombuffer(parm, dtype=DTYPES[dtype].newbyteorder("<"), count=elems, offset=off)
    return arr.astype(DTYPES[dtype], copy=False).reshape(shape)


def _attrs_ok(value: Any, depth: int = 0) -> bool:
    """Attributes are small JSON values: scalars, short lists, shallow mappings."""
    if depth > 3:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return not isinstance(value, str) or len(value) <= 256
    if isinstance(value, list):
        return len(value) <= 64 and all(_attrs_ok(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(
            isinstance(k, str) and _attrs_ok(v, depth + 1) for k, v in value.items()
        )
    return False


def program_from_sections(path: Path, sections: dict[bytes, bytes]) -> Program:
    """Decode and validate the program of verified sections: its structure
    (:func:`~fcos_plugin_nash_e.ir.validate_program`: target limits, shapes through the program,
    inputs, memory) and its metadata (:func:`check_meta`). Whatever else escapes decoding is
    reported as an :class:`ArtifactError` too: the content is untrusted even when its
    checksums are right (anyone can recompute them)."""
    try:
        return _program_from_sections(path, sections)
    except ArtifactError:
        raise
    except (
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        AttributeError,
        ArithmeticError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise ArtifactError(
            path, f"the program cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _program_from_sections(path: Path, sections: dict[bytes, bytes]) -> Program:
    rd = _Reader(path)
    meta = _json(path, sections[b"META"], "META")
    if not isinstance(meta, dict) or meta.get("format") != "fcos-nash-e-program":
        raise rd.fail("META is not an fcos NASH-E program")
    parm = sections[b"PARM"]
    tensors: dict[str, TensorInfo] = {}
    tlist = rd.get(meta, "tensors", list, "META")
    if len(tlist) > MAX_TENSORS:
        raise rd.fail(f"{len(tlist)} tensors exceed the limit {MAX_TENSORS}")
    for k, t in enumerate(tlist):
        where = f"tensors[{k}]"
        name = rd.get(t, "name", str, where)
        if name in tensors:
            raise rd.fail(f"{where}: duplicate tensor name {name!r}")
        scale = rd.number(t, "scale", where)
        tensors[name] = TensorInfo(
            name,
            rd.int_list(t, "shape", where, 4),
            rd.get(t, "dtype", str, where),
            scale,
            rd.get(t, "zero_point", int, where),
        )
    inputs = []
    for k, i in enumerate(rd.get(meta, "inputs", list, "META")[:16]):
        where = f"inputs[{k}]"
        inputs.append(
            InputInfo(
                rd.get(i, "name", str, where),
                rd.get(i, "tensor", str, where),
                rd.get(i, "source", str, where),
                rd.int_list(i, "shape", where, 4),
            )
        )
    if not inputs or len(rd.get(meta, "inputs", list, "META")) > 16:
        raise rd.fail("the program needs 1..16 inputs")
    ops = []
    olist = rd.get(meta, "ops", list, "META")
    if len(olist) > MAX_OPS:
        raise rd.fail(f"{len(olist)} ops exceed the limit {MAX_OPS}")
    for k, o in enumerate(olist):
        where = f"ops[{k}]"
        attrs = rd.get(o, "attrs", dict, where)
        if not _attrs_ok(attrs):
            raise rd.fail(f"{where}: attributes are not small JSON values")
        prefs = rd.get(o, "params", dict, where)
        if len(prefs) > 8:
            raise rd.fail(f"{where}: too many parameters")
        params = {
            str(key): _param(rd, ref, parm, f"{where}.params.{key}") for key, ref in prefs.items()
        }
        ops.append(
            Op(
                rd.get(o, "kind", str, where),
                rd.get(o, "name", str, where),
                rd.str_list(o, "inputs", where, 64),
                rd.str_list(o, "outputs", where, 1),
                attrs,
                params,
                rd.str_list(o, "fused", where, 64),
            )
        )
    outputs = rd.str_list(meta, "outputs", "META", 256)
    info = rd.get(meta, "meta", dict, "META")
    prog = Program(rd.get(meta, "name", str, "META"), tensors, inputs, ops, outputs, info)
    try:
        validate_program(prog)
    except ProgramError as exc:
        raise rd.fail(f"invalid program: {exc}") from None
    check_meta(rd, prog)
    return prog


#: what ``fcos infer`` may be asked to keep / consider per image
MAX_DETECTIONS = 100_000
MAX_LEVELS = 8


def _fin(
    rd: _Reader,
    obj: dict,
    key: str,
    where: str,
    lo: float,
    hi: float,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    v = rd.number(obj, key, where)
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise rd.fail(
            f"{where}.{key}: {v} outside {'(' if lo_open else '['}{lo}, {hi}"
            f"{')' if hi_open else ']'}"
        )
    return v


def _int(rd: _Reader, obj: dict, key: str, where: str, lo: int, hi: int) -> int:
    v = rd.get(obj, key, int, where)
    if not lo <= v <= hi:
        raise rd.fail(f"{where}.{key}: {v} outside {lo}..{hi}")
    return v


def _pair(rd: _Reader, obj: dict, key: str, where: str, hi: int) -> tuple[int, int]:
    v = rd.int_list(obj, key, where, max_len=2)
    if len(v) != 2 or not all(1 <= x <= hi for x in v):
        raise rd.fail(f"{where}.{key}: expected [height, width] in 1..{hi}, got {list(v)}")
    return v[0], v[1]


def check_meta(rd: _Reader, prog: Program) -> None:
    """The model information ``fcos infer`` decodes with, against its schema and the graph:
    ``input_size`` is the input's size, ``preprocess`` names a known colour space, and
    ``detection`` has valid decoder parameters and strides matching the outputs (3 or 4 groups
    of one tensor per stride: class logits, boxes, centerness, max logits, with the feature-map
    size of each stride). Keys it does not know are allowed (additive minor versions)."""
    info, where = prog.meta, "META.meta"
    for key, kind in (
        ("dequant_output", bool),
        ("input_source", str),
        ("opt", str),
        ("memory_plan", dict),
        ("compiler", dict),
        ("preprocess", dict),
        ("detection", dict),
    ):
        if key in info:
            rd.get(info, key, kind, where)
    size = None
    if "input_size" in info:
        size = _pair(rd, info, "input_size", where, LIMITS.max_spatial)
        shape = prog.inputs[0].shape
        if tuple(shape[2:]) != size:
            raise rd.fail(
                f"{where}.input_size {list(size)} is not the input's size {list(shape[2:])}"
            )
    pre = info.get("preprocess")
    if pre is not None:
        color = pre.get("color", "yuv")
        if color not in ("yuv", "rgb"):
            raise rd.fail(f"{where}.preprocess.color: {str(color)[:40]!r} is not yuv or rgb")
        for key in ("mean", "std"):
            if key in pre:
                _fin(rd, pre, key, f"{where}.preprocess", 0.0 if key == "mean" else 1e-6, 1e6)
    det = info.get("detection")
    if det is None:
        return
    w = f"{where}.detection"
    if size is None:
        raise rd.fail(f"{w}: needs {where}.input_size")
    if len(prog.inputs) != 1:
        raise rd.fail(f"{w}: a detector has one image input, the program has {len(prog.inputs)}")
    strides = rd.int_list(det, "strides", w, max_len=MAX_LEVELS)
    if (
        not strides
        or not all(1 <= v <= LIMITS.max_spatial for v in strides)
        or sorted(set(strides)) != list(strides)
    ):
        raise rd.fail(
            f"{w}.strides: expected 1..{MAX_LEVELS} strictly increasing strides in "
            f"1..{LIMITS.max_spatial}, got {list(strides)}"
        )
    _fin(rd, det, "threshold", w, -1e6, 1e6)
    _fin(rd, det, "score_threshold", w, 0.0, 1.0, hi_open=True)
    _fin(rd, det, "iou_threshold", w, 0.0, 1.0, lo_open=True)
    _int(rd, det, "nms_pre", w, 1, MAX_DETECTIONS)
    _int(rd, det, "max_per_img", w, 1, MAX_DETECTIONS)
    if det.get("max_shape") is not None:
        _pair(rd, det, "max_shape", w, 1 << 16)
    rd.get(det, "bbox_upscaled", bool, w)
    num_classes = det.get("num_classes")
    if num_classes is not None:
        num_classes = _int(rd, det, "num_classes", w, 1, LIMITS.max_channels)
    if "layout" in det:
        rd.get(det, "layout", str, w)
    n = len(strides)
    if len(prog.outputs) not in (3 * n, 4 * n):
        raise rd.fail(
            f"{w}.strides: {n} strides need 3 x {n} or 4 x {n} outputs (class, box, "
            f"centerness[, max logit] per stride); the program has "
            f"{len(prog.outputs)}"
        )
    groups = ("class", "box", "centerness", "max logit")
    for lvl, stride in enumerate(strides):
        hw = None
        for g in range(len(prog.outputs) // n):
            t = prog.tensors[prog.outputs[g * n + lvl]]
            want = {0: num_classes, 1: 4, 2: 1, 3: 1}[g]
            if want is None:
                want = num_classes = t.shape[1]
            if t.shape[1] != want:
                raise rd.fail(
                    f"{w}: {groups[g]} output {t.name!r} of stride {stride} has "
                    f"{t.shape[1]} channels, expected {want}"
                )
            if hw is None:
                hw = tuple(t.shape[2:])
                for dim, full in zip(hw, size):
                    if not full // stride <= dim <= -(-full // stride):
                        raise rd.fail(
                            f"{w}: output {t.name!r} is {hw[0]}x{hw[1]}, which is "
                            f"not stride {stride} of the {size[0]}x{size[1]} input"
                        )
            elif tuple(t.shape[2:]) != hw:
                raise rd.fail(
                    f"{w}: output {t.name!r} of stride {stride} is "
                    f"{t.shape[2]}x{t.shape[3]}, the other outputs of that stride "
                    f"are {hw[0]}x{hw[1]}"
                )


def read_artifact(path: Path | str) -> tuple[Program, dict[str, Any] | None]:
    """Load, verify and decode an artifact: the program and its performance report (or None)."""
    path = Path(path)
    sections = read_sections(path)
    prog = program_from_sections(path, sections)
    perf = _json(path, sections[b"PERF"], "PERF") if b"PERF" in sections else None
    return prog, perf
