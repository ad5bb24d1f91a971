"""Drop Ray's known false alarms from this process's stderr, and nothing else.

Ray Data passes every actor-pool worker its context and transform as object-store references, and
Ray's core worker then logs, at error level, that such an actor may fail to restart (ray-project/ray
#53727, reported for Ray Data as #57733). The line appears for every `map_batches` with a callable class,
names no error of ours, and reads as a failure to users. It is written by Ray's C++ logger straight to
file descriptor 2, so Python's logging cannot filter it: this routes fd 2 through a pipe and forwards
every write except those lines. A write is forwarded as soon as it arrives (progress bars keep working).
"""

from __future__ import annotations

import atexit
import os
import re
import threading

# The notice names the actor class and id; nothing else in this pattern varies.
RAY_NOTICES = (
    re.compile(rb"[^\n]*has constructor arguments in the object store and max_restarts > 0[^\n]*\n?"),
)
DISABLE_ENV = "VALLEY_RAW_STDERR"  # set to 1 to see stderr exactly as Ray writes it

_installed = False


def filtered(chunk: bytes, patterns: tuple[re.Pattern[bytes], ...] = RAY_NOTICES) -> bytes:
    """`chunk` without the lines any pattern matches. Pure."""
    for pattern in patterns:
        chunk = pattern.sub(b"", chunk)
    return chunk


def install() -> bool:
    """Route fd 2 through the filter for the rest of this process (idempotent). Returns whether it is on."""
    global _installed
    if _installed or os.environ.get(DISABLE_ENV) == "1":
        return _installed
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        try:
            while chunk := os.read(read_end, 65536):
                kept = filtered(chunk)
                if kept:
                    os.write(original, kept)
        except OSError:  # the terminal went away: give fd 2 back rather than let writers block on a full pipe
            os.dup2(original, 2)

    thread = threading.Thread(target=pump, name="valley-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:  # at exit: give fd 2 back, let the pump drain what was written before
        os.dup2(original, 2)
        thread.join(timeout=0.5)

    atexit.register(restore)
    _installed = True
    return True
