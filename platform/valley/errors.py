"""Error types shared by every stage, so users always learn which file, row and field failed."""

from __future__ import annotations

import errno
import os
import re


class ValleyError(Exception):
    """Base class for errors the platform raises on purpose."""


class InputError(ValleyError):
    """Bad user input, located as precisely as we can (file, row, field)."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field = file, row, field
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file is not None else "",
                f"row {row}" if row is not None else "",
                f"field {field!r}" if field is not None else "",
            )
            if part
        )
        super().__init__(f"{message} ({where})" if where else message)


class ConfigError(ValleyError):
    """A configuration that cannot run (inconsistent sizes, missing paths, unknown options)."""


class SandboxUnavailableError(ValleyError):
    """The OS sandbox cannot start on this host and the user did not opt into the weaker mode."""


# errors of the place written to, not of the program: a full disk or quota, a read-only or vanished mount
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ESTALE, errno.EIO)


def storage_errno(exc: BaseException) -> int | None:
    """The storage errno behind an error, also when Ray or Ray Train passed it on as text (a worker's OSError
    reaches the driver inside a RayTaskError or a WorkerGroupError, with only "[Errno 28]" left of it)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in STORAGE_ERRNOS:
            return cur.errno
        cur = cur.__cause__ or cur.__context__
    for found in re.findall(r"\[errno (\d+)\]", str(exc), flags=re.IGNORECASE):
        if int(found) in STORAGE_ERRNOS:
            return int(found)
    return None


class StorageError(ValleyError):
    """A storage root that cannot be written (full, read-only, gone, timing out), naming the path and the cause."""

    @classmethod
    def of(cls, action: str, path: str, cause: BaseException) -> StorageError:
        """"cannot write /runs/x/part-3.parquet: No space left on device (ENOSPC)" from the error beneath."""
        err = getattr(cause, "errno", None) or storage_errno(cause)
        detail = os.strerror(err) if err else str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        code = errno.errorcode.get(err, "") if err else ""
        return cls(f"cannot {action} {path}: {detail}" + (f" ({code})" if code else ""))
