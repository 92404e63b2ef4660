"""logging_setup: JSON lines in the run folder, rank-zero filtering, levels."""

from __future__ import annotations

import io
import json

from fcos_core.logging_setup import close_logging, configure_logging, get_logger


def test_json_lines_and_console(tmp_path):
    stream = io.StringIO()
    log = get_logger("fcos.test")  # created before configuration: still follows it
    configure_logging(tmp_path, rank=0, level="info", stream=stream)
    log.info("hello", answer=42)
    log.debug("hidden")
    close_logging()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["event"] == "hello" and rec["answer"] == 42 and rec["logger"] == "fcos.test"
    assert rec["level"] == "info" and rec["rank"] == 0 and "timestamp" in rec
    assert "hello" in stream.getvalue() and "answer=42" in stream.getvalue()


def test_rank_zero_only(tmp_path):
    stream = io.StringIO()
    configure_logging(tmp_path, rank=1, rank_zero_only=True, world_size=2, stream=stream)
    get_logger("x").warning("from rank 1")
    assert stream.getvalue() == "" and not (tmp_path / "log.jsonl").exists()
    configure_logging(tmp_path, rank=1, rank_zero_only=False, world_size=2, stream=stream)
    get_logger("x").warning("now visible")
    close_logging()
    rec = json.loads((tmp_path / "log.rank1.jsonl").read_text())
    assert rec["rank"] == 1 and rec["event"] == "now visible"
