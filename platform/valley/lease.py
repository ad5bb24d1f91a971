"""One writer per stage run: a lease file (`_LEASE`) in the stage directory, taken before the run starts
and renewed while it runs.

Without it, a second `valley generate` (or a retried `ray job submit`) on the same storage root cleans the
first one's temporaries and writes every sample again beside it, and the directory then holds more than
its config asks. The lease names its owner (user, host, pid) and carries a heartbeat; a newcomer finding
a live lease stops with the owner named, or waits for it with `--wait` (`$VALLEY_LEASE_WAIT=1`). A lease
whose heartbeat is older than its time to live, or whose owner is a process that no longer exists on this
host (a `kill -9`), is stale: the newcomer takes it over and only then cleans temporaries.

Taking a lease is an exclusive create on a local filesystem: the record is written whole to a temporary
file and hard-linked to `_LEASE`, which fails when one exists, so nobody ever reads a lease half written.
Object stores have no such
primitive in `pyarrow.fs`: there the lease is written, read back after a short pause and kept only if it
is still ours, which closes the window to that pause, not to zero (said here, not hidden).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from valley.errors import ConfigError
from valley.storage import TMP_PREFIX, Storage

LEASE = "_LEASE"
TTL_S = 120.0  # a lease not renewed for this long is stale (renewed every TTL_S / 4)
WAIT_ENV = "VALLEY_LEASE_WAIT"
READ_BACK_S = 0.2  # object stores: the pause before a written lease is read back


class LeaseHeld(ConfigError):
    """Another live writer holds the stage run."""


@dataclass(frozen=True)
class LeaseRecord:
    owner: str  # user@host pid
    host: str
    pid: int
    token: str  # this holder's id: a renewal or release touches only its own lease
    started: float
    heartbeat: float
    ttl_s: float

    def age(self, now: float) -> float:
        return now - self.heartbeat

    def stale(self, now: float) -> bool:
        """Not renewed within its time to live, or its process is gone from this host."""
        if self.age(now) > self.ttl_s:
            return True
        return self.host == socket.gethostname() and not process_alive(self.pid)


def process_alive(pid: int) -> bool:
    """Whether a process of this host is still there (another user's counts as there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _me(ttl_s: float) -> LeaseRecord:
    host, now = socket.gethostname(), time.time()
    return LeaseRecord(f"{getpass.getuser()}@{host} pid {os.getpid()}", host, os.getpid(), uuid.uuid4().hex, now,
                       now, ttl_s)


def read_lease(storage: Storage, stage_dir: str) -> LeaseRecord | None:
    """The lease of a stage run, or None (no writer, or a lease file cut short while being written)."""
    if not storage.exists(stage_dir, LEASE):
        return None
    try:
        return LeaseRecord(**storage.read_json(stage_dir, LEASE))
    except (ValueError, TypeError, OSError):
        return None


def _create(storage: Storage, stage_dir: str, record: LeaseRecord) -> bool:
    """Write the lease only if there is none: exclusive on local disks, written and read back elsewhere."""
    blob = json.dumps(asdict(record)).encode()
    path = storage.path(stage_dir, LEASE)
    if storage.local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{record.token}-{LEASE}")
        with open(tmp, "wb") as f:
            f.write(blob)
        try:
            os.link(tmp, path)  # atomic, and refused when a lease is there
        except (FileExistsError, FileNotFoundError):  # not found: the holder cleaned our temporary
            return False
        except OSError:  # a filesystem without hard links: an exclusive create, then the record
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True
    if storage.exists(stage_dir, LEASE):
        return False
    storage.write_bytes(blob, stage_dir, LEASE)
    time.sleep(READ_BACK_S)
    found = read_lease(storage, stage_dir)
    return found is not None and found.token == record.token


class StageLease:
    """The lease of one stage run, held from `acquire` to `release` and renewed by a daemon thread."""

    def __init__(self, storage: Storage, stage_dir: str, ttl_s: float = TTL_S):
        self.storage, self.stage_dir, self.ttl_s = storage, stage_dir, ttl_s
        self.record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: bool | None = None, poll_s: float = 2.0) -> StageLease:
        """Take the lease, taking over a stale one; a live one is waited for (`wait`, default
        `$VALLEY_LEASE_WAIT`) or refused with its owner named."""
        wait = os.environ.get(WAIT_ENV, "") not in ("", "0") if wait is None else wait
        while True:
            mine = _me(self.ttl_s)
            if _create(self.storage, self.stage_dir, mine):
                self.record = mine
                self._start_renewing()
                return self
            held = read_lease(self.storage, self.stage_dir)
            now = time.time()
            if held is None and not self.storage.exists(self.stage_dir, LEASE):
                continue  # released in between: try again
            if held is None:  # unreadable (damaged): stale once nobody has touched it for a lease's lifetime
                held = LeaseRecord("an unreadable lease", "", 0, "", self.storage.modified(self.stage_dir, LEASE),
                                   self.storage.modified(self.stage_dir, LEASE), self.ttl_s)
            if held.stale(now):
                self.storage.remove(self.stage_dir, LEASE)  # take it over
                continue
            if not wait:
                raise LeaseHeld(
                    f"{self.storage.uri(self.stage_dir)} is being written by {held.owner} (started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.started))}, last heartbeat "
                    f"{held.age(now):.0f} s ago); wait for it with --wait (or {WAIT_ENV}=1), or stop that "
                    f"process; a lease nobody renews expires after {held.ttl_s:.0f} s")
            time.sleep(poll_s)

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.stage_dir}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            if self.record is None:
                return
            held = read_lease(self.storage, self.stage_dir)
            if held is not None and held.token != self.record.token:
                return  # taken over (we were presumed dead): the new holder's lease is not ours to touch
            self.record = LeaseRecord(**{**asdict(self.record), "heartbeat": time.time()})
            self.storage.write_bytes(json.dumps(asdict(self.record)).encode(), self.stage_dir, LEASE)

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = read_lease(self.storage, self.stage_dir)
        if self.record is not None and held is not None and held.token == self.record.token:
            self.storage.remove(self.stage_dir, LEASE)
        self.record = None

    def __enter__(self) -> StageLease:
        return self if self.record is not None else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
