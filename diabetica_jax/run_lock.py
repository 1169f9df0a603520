"""One process at a time in a run or output directory: an exclusive lock on DIR/.lock while the work runs.

Two `train` processes on one run directory would both write its checkpoints and metrics, two curations each
other's shards, and both would end as if all were well. The lock is an flock(2) on the file: the kernel releases it
when its holder exits, however it exits (killed too), so a lock file left behind by a dead process never blocks;
only a live holder does. While held, the file records the holder (pid, host, what, since) for the refusal to name;
released, it is left empty (not removed: a process may have it open already, and would lock a file no longer there).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from diabetica_jax.configuration import InputError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class DirectoryInUse(InputError):
    """Another live process holds the directory's lock; the message names the directory and the holder."""


class _Flock:
    """The open lock file of one directory, shared by every DirectoryLock this process holds on it."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd, self.holders = path, fd, 0


# The locks this process holds, by lock file. A process never blocks itself: a second hold_lock on a directory it
# holds (nested, or after a failed run whose traceback still holds the first) shares the flock, released with the
# last of them. flock would otherwise refuse it, as it refuses another open() of the file in the same process.
_HELD: dict[Path, _Flock] = {}


class DirectoryLock:
    """A hold on a directory's lock: released by release(), at the end of a `with` block, when garbage collected
    (a function's local, as curate() keeps it, at its return) or when the process exits."""

    def __init__(self, flock: _Flock):
        self._flock = flock
        flock.holders += 1

    def release(self) -> None:
        flock, self._flock = self._flock, None
        if flock is None:
            return
        flock.holders -= 1
        if flock.holders == 0:
            _HELD.pop(flock.path, None)
            if flock.fd is not None:
                os.ftruncate(flock.fd, 0)  # no holder: an empty file (a killed holder's record stays, unheeded)
                os.close(flock.fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def hold_lock(directory: str | Path, what: str, name: str = LOCK_FILE) -> DirectoryLock:
    """Lock `directory` (created if missing) for `what` ("training", "curation"), or DirectoryInUse naming the
    process that holds it. `name`: the lock file, for processes of one job that each need their own (multi-host
    training: one per process index). On a filesystem without flock support the work goes on unlocked, with a
    warning."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = (directory / name).absolute()
    flock = _HELD.get(path)
    if flock is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DirectoryInUse(f"{directory}: in use by {holder} (lock file {path}); wait for it to end, or "
                                 "use another directory") from None
        except OSError as e:  # e.g. ENOLCK on an NFS mount without a lock daemon
            os.close(fd)
            log.warning("%s: cannot lock it (%s); going on without the lock, so make sure no other process uses "
                        "this directory", directory, e.strerror or e)
            fd = None
        if fd is not None:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                      "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        flock = _HELD[path] = _Flock(path, fd)
    return DirectoryLock(flock)


def _holder(fd: int) -> str:
    """Who holds the lock, as its file records it ("another process" while the holder has yet to write it)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"{record['what']} (pid {record['pid']} on {record['host']}, since {record['since']})"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "another process"
