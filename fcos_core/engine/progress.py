"""Progress bars for people: ETA and the live loss terms, on stderr, rank 0, terminals only.

Bars are off when stderr is not a terminal (logs, CI), on ranks other than 0, and when
``FCOS_PROGRESS=0``; the periodic log lines of ``StatsMonitor`` carry the same numbers then.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_enabled(rank: int) -> bool:
    flag = os.environ.get("FCOS_PROGRESS")
    if flag is not None:
        return flag not in ("", "0") and rank == 0
    return rank == 0 and bool(getattr(sys.stderr, "isatty", lambda: False)())


class Progress:
    """A tqdm bar, or nothing when disabled (the loop code does not need to care)."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0) -> None:
        self._bar: Any = None
        if enabled and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                mininterval=0.5,
            )

    def update(self, losses: dict[str, float] | None = None) -> None:
        if self._bar is None:
            return
        if losses:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        self._bar.update(1)

    def write(self, message: str) -> None:
        """A line on stderr that does not break the bar (printed above it)."""
        if self._bar is None:
            print(message, file=sys.stderr)
        else:
            self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
