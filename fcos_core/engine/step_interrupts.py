"""Ctrl-C and SIGTERM wait for the training step to finish.

A training step is not atomic: the optimizer changes the weights one tensor at a time, then
``on_step_end`` updates the EMA copy, the counters and the logs. An interrupt that lands in
the middle would leave a half-applied step, which no checkpoint can represent, so before this
module the trainer kept the previous checkpoint and the steps since were lost -- and whether
that happened depended on the microsecond the signal arrived.

:func:`step_interrupts_deferred` holds SIGINT and SIGTERM for the length of one step: the first
signal is remembered and delivered (to the handler that was installed before, e.g.
:func:`~fcos_core.engine.run_guard.sigterm_as_interrupt`'s, or Python's ``KeyboardInterrupt``)
as soon as the step is complete, so the interrupt path always saves a consistent ``last``
checkpoint at the step just finished. A second signal while the step still runs is delivered at
once: a user who presses Ctrl-C twice (a step stuck in a collective, a very slow step) is never
ignored; the trainer then keeps the previous checkpoint, as its ``state.consistent`` flag says.

Signal handlers belong to the main thread; elsewhere (a trainer driven from a worker thread)
this is a no-op and signals behave as before.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def step_interrupts_deferred() -> Iterator[None]:
    """While inside, the first SIGINT/SIGTERM waits for the block's end; a second one does not.

    On exit the previous handlers are restored and a remembered signal is delivered to them
    (a Python handler is called; the default action is re-raised with ``os.kill``; an ignored
    signal stays ignored). An exception leaving the block takes precedence and the held signal
    is dropped: in the trainer every exception out of a step already ends training.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}

    def deliver(signum: int) -> None:
        before = previous[signum]
        if callable(before):
            before(signum, None)
        elif before == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)  # the default action (SIGTERM: the process ends)

    def hold(signum: int, frame: Any) -> None:
        if pending:  # the second signal: the user insists, deliver now
            restore_signal_handlers(previous)
            pending.clear()
            deliver(signum)
            return
        pending.append(signum)

    previous.update(saved_signal_handlers(DEFERRED_SIGNALS))
    for signum in DEFERRED_SIGNALS:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        restore_signal_handlers(previous)
    if pending:
        deliver(pending[0])


def saved_signal_handlers(signums: Iterable[int]) -> dict[int, Any]:
    """The current handlers of ``signums``, in a form :func:`restore_signal_handlers` can put
    back (a handler installed outside Python reads as None; the default is the nearest)."""
    return {s: signal.SIG_DFL if (h := signal.getsignal(s)) is None else h for s in signums}


def restore_signal_handlers(saved: dict[int, Any]) -> None:
    """Install the handlers :func:`saved_signal_handlers` returned (main thread only)."""
    for signum, handler in saved.items():
        signal.signal(signum, handler)
