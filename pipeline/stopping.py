"""A driver told to stop (`ray job stop`, `kubectl delete rayjob`, Ctrl-C: SIGTERM or SIGINT) stops cleanly: the
episodes under way stop waiting, their executions are cancelled, their open attempts are closed and billed to
their last heartbeat, and the ledger is checkpointed, before the process exits. Whatever a hard kill cuts short
is closed later, from any host, by heartbeat age (pipeline/metering/attempts.py)."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP = threading.Event()  # set by the first SIGTERM/SIGINT; every episode thread of this driver checks it
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a terminated process


class Stopped(KeyboardInterrupt):
    """The driver was told to stop. A KeyboardInterrupt, so `except Exception` (retries, settling) lets it by."""

    def __init__(self, why: str = "the driver was told to stop (SIGTERM/SIGINT)") -> None:
        super().__init__(why)
        self.why = why


def check() -> None:
    """Raise Stopped once the driver was told to stop (called between waits in every episode thread)."""
    if STOP.is_set():
        raise Stopped()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Enter it after `ray.init` (Ray's core worker installs a SIGTERM handler that aborts the process). While
    the block runs (entered in the main thread), SIGTERM and SIGINT set STOP: every episode's wait
    (Progress.wait) raises Stopped within half a second, so each episode cancels its work, closes and bills its
    open attempts and checkpoints the ledger. A second signal gets the default action (the process ends at
    once; its open attempts are then closed by heartbeat age)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()  # a new driver session: an earlier stop in this process is over
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        STOP.set()
        for sig, old in previous.items():  # a second signal is not caught: the operator insists
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        STOP.clear()
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
