"""Stopping long work on SIGINT/SIGTERM without deadlocking.

Why not ``signal.signal(sig, lambda *_: event.set())``: a Python signal handler runs in the main
thread between two bytecodes, possibly while that thread holds the event's own (non-reentrant)
lock inside ``event.wait()``; ``set()`` then waits for that lock forever. So the handler only
writes a byte to a pipe (no lock involved), and a helper thread reads it and sets the event.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@contextmanager
def stop_on_signals(
    stop: threading.Event, *, message: str = "stopping", only_defaults: bool = True
) -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM sets ``stop`` (after logging ``"SIGTERM: <message>"``);
    a second SIGINT raises KeyboardInterrupt, so Ctrl-C twice still aborts. Outside the main thread
    (where handlers cannot be installed) this does nothing. With ``only_defaults``, handlers that
    someone else installed are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        os.write(write_fd, bytes([signum]))

    def relay() -> None:
        while data := os.read(read_fd, 1):
            if data[0] == 0:
                return
            log.warning("%s: %s", signal.Signals(data[0]).name, message)
            stop.set()

    thread = threading.Thread(target=relay, name="voxlake-signals", daemon=True)
    thread.start()
    previous = {
        sig: signal.signal(sig, handler)
        for sig, default in _DEFAULTS.items()
        if not only_defaults or signal.getsignal(sig) is default
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.write(write_fd, b"\0")
        thread.join()
        os.close(read_fd)
        os.close(write_fd)
