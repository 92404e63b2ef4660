"""Logging for runs: readable lines on the console for people, JSON lines in the run folder.

:func:`configure_logging` sets structlog up once per process:

* console: structlog's ``ConsoleRenderer`` on stderr (colours only on a terminal), written
  through ``tqdm.write`` so that log lines do not tear progress bars apart;
* file: ``<run_dir>/log.jsonl``, one JSON object per event (``timestamp``, ``level``,
  ``logger``, ``rank``, ``event`` and the event's key/values), appended so that a resumed run
  continues the same log;
* distributed runs: with ``rank_zero_only`` (the config's ``log_rank_zero_only``, default on)
  only rank 0 emits; otherwise every rank logs and events carry their ``rank``.

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_state: dict[str, Any] = {"file": None}
_lock = threading.Lock()


class _TqdmLogger:
    """A structlog logger that writes rendered lines with ``tqdm.write`` (bar-safe)."""

    def __init__(self, stream: TextIO | None = None, name: str = "fcos") -> None:
        self._stream = stream
        self.name = name

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        try:
            from tqdm import tqdm

            tqdm.write(message, file=stream)
        except Exception:  # noqa: BLE001 - a closed stream at interpreter exit must not raise
            with contextlib.suppress(Exception):
                print(message, file=stream)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _TqdmLoggerFactory:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _TqdmLogger:
        return _TqdmLogger(self._stream, str(args[0]) if args else "fcos")


def _add_logger_name(logger: Any, _method: str, event: EventDict) -> EventDict:
    event.setdefault("logger", getattr(logger, "name", "fcos"))
    return event


class _RankFilter:
    """Drops every event on ranks other than 0 when ``rank_zero_only``; tags the rank."""

    def __init__(self, rank: int, rank_zero_only: bool, world_size: int) -> None:
        self.rank = rank
        self.drop = rank_zero_only and rank != 0
        self.tag = world_size > 1 and not rank_zero_only

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        if self.drop:
            raise structlog.DropEvent
        if self.tag:
            event.setdefault("rank", self.rank)
        return event


class _JsonLinesTee:
    """Writes each event as one JSON line to the run folder's log, then passes it on."""

    def __init__(self, handle: TextIO | None, rank: int) -> None:
        self.handle = handle
        self.rank = rank

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        if self.handle is not None:
            record = {"rank": self.rank, **event}
            line = json.dumps(record, default=str, ensure_ascii=False)
            with _lock:
                self.handle.write(line + "\n")
                self.handle.flush()
        return event


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(_LEVELS)}") from None


def configure_logging(
    run_dir: Path | str | None,
    rank: int = 0,
    rank_zero_only: bool = True,
    level: str | int = "info",
    world_size: int = 1,
    stream: TextIO | None = None,
) -> None:
    """Set up structlog for this process (replacing any earlier setup).

    Args:
        run_dir: the run folder; ``log.jsonl`` is appended there. None: console only.
        rank: this process's global rank (0 when not distributed).
        rank_zero_only: only rank 0 emits anything (console and file).
        level: minimum level (``"debug"``, ``"info"``, ``"warning"``, ...).
        world_size: number of processes; when several log, events are tagged with their rank.
        stream: console stream (default: ``sys.stderr`` at the time of each write).
    """
    close_logging()
    handle: TextIO | None = None
    if run_dir is not None and not (rank_zero_only and rank != 0):
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        name = "log.jsonl" if rank == 0 or rank_zero_only else f"log.rank{rank}.jsonl"
        handle = open(path / name, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        _state["file"] = handle
    colors = bool(getattr(stream or sys.stderr, "isatty", lambda: False)())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _RankFilter(rank, rank_zero_only, world_size),
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso"),
            _JsonLinesTee(handle, rank),
            structlog.dev.ConsoleRenderer(colors=colors, pad_event_to=30),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=_TqdmLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def close_logging() -> None:
    """Close the JSON-lines file of the current setup (a later event only goes to console)."""
    handle = _state.get("file")
    _state["file"] = None
    if handle is not None:
        with contextlib.suppress(Exception):
            handle.close()
        # events after closing keep working: they lose the file, not the console
        structlog.configure(
            processors=[
                p for p in structlog.get_config()["processors"] if not isinstance(p, _JsonLinesTee)
            ]
        )


def get_logger(name: str = "fcos") -> Any:
    """A structlog logger that tags its events with ``logger=name``."""
    # a lazy proxy (no .bind here), so that a later configure_logging applies to it too
    return structlog.get_logger(name)
