"""Layout of the LMDB written by ``fcos pack-coco`` (no pickle: JSON headers + raw bytes).

Keys:

``__meta__``
    JSON: format name and version, categories (sorted by id), ``cat_ids``, split name, the
    source json's SHA-256 (a resume must come from the same json) and the pack settings.
``img/<id>``
    one image: ``MAGIC`` + uint32 little-endian header length + JSON header
    (:meth:`ImageRecord.header` plus ``orientation`` and ``notes``) + the original encoded bytes.
``__index__``
    JSON list of the packed image ids in json order (written when packing completes).
``__summary__``
    the JSON summary; ``__complete__`` marks a finished pack (readers refuse anything else).
"""

from __future__ import annotations

import json
import struct
from typing import Any

FORMAT_NAME = "fcos-coco-lmdb"
FORMAT_VERSION = 1
MAGIC = b"FCOSIMG1"
_LEN = struct.Struct("<I")

META_KEY = b"__meta__"
INDEX_KEY = b"__index__"
SUMMARY_KEY = b"__summary__"
COMPLETE_KEY = b"__complete__"


def image_key(image_id: int) -> bytes:
    return b"img/%d" % image_id


def encode_record(header: dict[str, Any], image_bytes: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + _LEN.pack(len(h)) + h + image_bytes


def decode_record(value: bytes | memoryview) -> tuple[dict[str, Any], bytes]:
    """Split a stored record into its header and the encoded image bytes."""
    value = bytes(value)
    if value[: len(MAGIC)] != MAGIC:
        raise ValueError("not an fcos image record (bad magic)")
    start = len(MAGIC) + _LEN.size
    (n,) = _LEN.unpack_from(value, len(MAGIC))
    if start + n > len(value):
        raise ValueError("truncated fcos image record")
    return json.loads(value[start : start + n]), value[start + n :]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
