"""Artifact format: round trip, and >= 1,000 damaged / hostile files that must each fail with
an ArtifactError naming the file -- never a crash, hang or unbounded allocation."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import numpy as np
import pytest
import torch

from fcos_core.errors import FcosUserError
from fcos_plugin_nash_e.artifact import (ENTRY_SIZE, HEADER_SIZE, MAX_FILE_BYTES, ArtifactError,
                                         read_artifact, read_sections, program_from_sections)
from fcos_plugin_nash_e.backend import NashEBackend


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, nash):
    d = tmp_path_factory.mktemp("art")
    model = nash.MiniDetector(nash.make_mini_fcos(seed=1, size=32), [4, 8]).eval()
    res = NashEBackend().compile(model, {"img": torch.zeros(1, 3, 32, 32)},
                                 {"name": "fz", "out_dir": str(d), "hbm": str(d / "fz.hbm"),
                                  "layer_details": True, "opt": "O3",
                                  "input_source": ["ddr"]}, d)
    return res.artifact, model


def test_round_trip_and_layout(artifact, nash):
    path, model = artifact
    data = path.read_bytes()
    assert data[:8] == b"FCOSNASH"
    prog, perf = read_artifact(path)
    assert perf is not None and perf["totals"]["layers"] == len(prog.ops)
    assert prog.meta["detection"]["strides"] == [4, 8]
    assert prog.meta["input_size"] == [32, 32]
    x = nash.to_float_input(nash.random_images(2, (32, 32), 3))
    out = NashEBackend().run(NashEBackend().load(path), {"img": x})
    with torch.no_grad():
        ref = model(x)
    assert all(np.array_equal(r.numpy(), o) for r, o in zip(ref, out))


def _expect_error(path, data: bytes) -> ArtifactError:
    path.write_bytes(data)
    with pytest.raises(ArtifactError) as info:
        read_artifact(path)
    err = info.value
    assert isinstance(err, FcosUserError)
    assert str(path) in str(err) and err.what
    return err


def test_fuzz_truncations_flips_and_garbage(artifact, tmp_path):
    """1,200 random mutations of a valid file: truncation, bit flips, byte overwrites,
    appended bytes, header field changes."""
    path, _ = artifact
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    target = tmp_path / "mutant.hbm"
    reasons = set()
    for i in range(1200):
        data = bytearray(good)
        kind = i % 6
        if kind == 0:
            data = data[: int(rng.integers(0, len(good)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(data)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:
            pos = int(rng.integers(0, len(data) - 8))
            data[pos:pos + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        elif kind == 3:
            data += rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        elif kind == 4:  # flip inside the header or table (structure, not payload)
            pos = int(rng.integers(0, HEADER_SIZE + 3 * ENTRY_SIZE + 4))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos] = (data[pos] + int(rng.integers(1, 256))) % 256
        if bytes(data) == good:
            continue
        reasons.add(_expect_error(target, bytes(data)).what.split(":")[0][:40])
    assert len(reasons) >= 5  # many distinct diagnoses, not one catch-all


def _reseal(good: bytes, edit) -> bytes:
    """Apply ``edit`` to the decoded META JSON and rebuild a file with valid checksums: the
    container is intact, the content hostile."""
    (count,) = struct.unpack_from("<I", good, 24)
    table = bytearray(good[HEADER_SIZE:HEADER_SIZE + ENTRY_SIZE * count])
    secs = {}
    for k in range(count):
        tag, _, off, length, *_ = struct.unpack_from("<4s4sQQI4s32s", table, k * ENTRY_SIZE)
        secs[tag] = good[off:off + length]
    meta = json.loads(secs[b"META"])
    edit(meta)
    secs[b"META"] = json.dumps(meta).encode()
    out = bytearray()
    table_end = HEADER_SIZE + ENTRY_SIZE * count + 4
    off = (table_end + 63) // 64 * 64
    entries, body = [], bytearray()
    for tag in (b"META", b"PARM", b"PERF"):
        if tag not in secs:
            continue
        d = secs[tag]
        entries.append(struct.pack("<4s4sQQI4s32s", tag, b"\0" * 4, off, len(d), zlib.crc32(d),
                                   b"\0" * 4, hashlib.sha256(d).digest()))
        body += b"\0" * (off - table_end - len(body)) + d
        off = (off + len(d) + 63) // 64 * 64
    size = table_end + len(body)
    head = struct.pack("<8sHHIQII28s", b"FCOSNASH", 1, 0, 64, size, len(entries), 0, b"\0" * 28)
    tbl = b"".join(entries)
    out += head + struct.pack("<I", zlib.crc32(head)) + tbl + struct.pack("<I", zlib.crc32(tbl))
    return bytes(out + body)


def _conv_index(meta):
    return next(i for i, o in enumerate(meta["ops"]) if o["kind"] == "conv2d")


HOSTILE = {
    "huge tensor": lambda m: m["tensors"][1].update(shape=[1, 2048, 4096, 4096]),
    "negative dim": lambda m: m["tensors"][1].update(shape=[1, -3, 8, 8]),
    "bad dtype": lambda m: m["tensors"][1].update(dtype="complex128"),
    "zero scale": lambda m: m["tensors"][1].update(scale=0.0),
    "huge zero point": lambda m: m["tensors"][1].update(zero_point=10 ** 30),
    "unknown op": lambda m: m["ops"][1].update(kind="sigmoid"),
    "param out of range": lambda m: m["ops"][_conv_index(m)]["params"]["weight"].update(
        offset=1 << 40),
    "param size lie": lambda m: m["ops"][_conv_index(m)]["params"]["weight"].update(
        shape=[100000, 100000, 3, 3]),
    "param misaligned": lambda m: m["ops"][_conv_index(m)]["params"]["bias"].update(offset=3),
    "missing param": lambda m: m["ops"][_conv_index(m)]["params"].pop("multiplier"),
    "wrong attr type": lambda m: m["ops"][_conv_index(m)]["attrs"].update(stride="2"),
    "deep attrs": lambda m: m["ops"][1]["attrs"].update(x=[[[[[[1]]]]]]),
    "read before write": lambda m: m["ops"].reverse(),
    "unknown tensor": lambda m: m["ops"][1].update(inputs=["nope"]),
    "duplicate tensor": lambda m: m["tensors"].append(dict(m["tensors"][0])),
    "shape lie": lambda m: m["tensors"][-1].update(shape=[1, 1, 3, 3]),
    "bad source": lambda m: m["inputs"][0].update(source="resizer"),
    "no inputs": lambda m: m.update(inputs=[]),
    "not a program": lambda m: m.update(format="something"),
    "output never written": lambda m: m["outputs"].append("ghost"),
    "huge shift": lambda m: m["ops"][[o["kind"] for o in m["ops"]].index("add")]["attrs"].update(
        shift=200) if any(o["kind"] == "add" for o in m["ops"]) else m.update(inputs=[]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_resealed_hostile_content_is_rejected(artifact, tmp_path, case):
    path, _ = artifact
    data = _reseal(path.read_bytes(), HOSTILE[case])
    _expect_error(tmp_path / "hostile.hbm", data)


def test_reseal_without_edit_is_valid(artifact, tmp_path):
    path, _ = artifact
    p = tmp_path / "same.hbm"
    p.write_bytes(_reseal(path.read_bytes(), lambda m: None))
    read_artifact(p)  # the helper itself writes valid files


def test_oversized_file_is_refused_before_reading(tmp_path):
    p = tmp_path / "big.hbm"
    with open(p, "wb") as fh:  # sparse: no disk or memory used
        fh.truncate(MAX_FILE_BYTES + 1)
    err = _expect_error_nowrite(p)
    assert "limit" in err.what


def _expect_error_nowrite(path):
    with pytest.raises(ArtifactError) as info:
        read_sections(path)
    return info.value


def test_deeply_nested_json_is_a_clear_error(artifact, tmp_path):
    path, _ = artifact
    sections = read_sections(path)
    sections[b"META"] = b"[" * 100000 + b"]" * 100000
    with pytest.raises(ArtifactError, match="not valid JSON|not an fcos"):
        program_from_sections(tmp_path / "x.hbm", sections)


def test_foreign_and_missing_files(tmp_path):
    p = tmp_path / "model.hbm"
    p.write_bytes(b"HBM\x00" + b"\x00" * 200)
    err = _expect_error(p, p.read_bytes())
    assert "magic" in err.what
    with pytest.raises(FcosUserError, match="cannot read"):
        read_artifact(tmp_path / "missing.hbm")


# --- the write: fsynced temp file, renamed into place, removed on failure (issue 14) --------


def test_write_fsyncs_before_the_rename_and_leaves_no_temp(artifact, tmp_path, monkeypatch):
    import os

    import fcos_plugin_nash_e.artifact as art

    prog, perf = read_artifact(artifact[0])
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(art.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(art.os, "replace",
                        lambda a, b: events.append(("replace", os.path.basename(a)))
                        or real_replace(a, b))
    out = tmp_path / "m.hbm"
    art.write_artifact(out, prog, perf)
    assert events[0] == "fsync" and events[1][0] == "replace"
    assert events[1][1].startswith(".m.hbm.") and events[1][1].endswith(".tmp")
    assert os.listdir(tmp_path) == ["m.hbm"]
    assert read_artifact(out)[0].meta == prog.meta


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_a_failed_write_removes_the_temp_and_keeps_the_old_file(artifact, tmp_path,
                                                                 monkeypatch, fail_at):
    import os

    import fcos_plugin_nash_e.artifact as art

    prog, perf = read_artifact(artifact[0])
    out = tmp_path / "m.hbm"
    out.write_bytes(b"the previous artifact")

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(art.os, fail_at, boom)
    with pytest.raises(OSError, match="No space"):
        art.write_artifact(out, prog, perf)
    assert os.listdir(tmp_path) == ["m.hbm"]
    assert out.read_bytes() == b"the previous artifact"
