"""A lock per grid stage, so two runners of one grid (a second terminal, a resubmitted SLURM job, a notebook beside
the grid) never run the same stage into the same folder at once.

The lock is a small JSON file created with O_EXCL, holding who runs the stage: pid, host, the process's start time
and when the stage started. Another runner finds it and leaves the stage to its holder. A lock whose holder is
gone (same host, and no process with that pid and start time) is taken over; a lock from another host cannot be
checked from here and counts as held until it is removed (`grid status` shows it, with its holder).

Taking a lock is one step for every contender: checking the holder and writing the new record happen under an
exclusive flock on the folder's `.locks.guard`, and the record is written whole (a temporary file renamed into
place). Without that, two runners reaching a stage in the same millisecond could both run it: one read the other's
lock file while it was still empty and took it for a dead holder's (seen once in CI).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

GUARD = ".locks.guard"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (Linux /proc), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote `holder` still runs; True when that cannot be told (another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def holder_of(path: str | Path) -> dict[str, Any] | None:
    """Who holds the lock at `path` (pid, host, since), or None when it is free or its holder is gone."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # free, or a lock file torn by a kill: nobody holds it
    return holder if isinstance(holder, dict) and _alive(holder) else None


@contextmanager
def _one_at_a_time(path: Path) -> Iterator[None]:
    """Hold the exclusive flock of `path`'s folder guard for the block, so no other process takes or frees a lock of
    that folder meanwhile (the kernel drops the flock if this process dies)."""
    fd = os.open(path.parent / GUARD, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without flock: the whole-record write below still keeps readers from torn files
        yield
    finally:
        os.close(fd)  # closing releases the flock


def acquire(path: str | Path) -> dict[str, Any] | None:
    """Take the lock at `path` for this process: None when taken (a dead holder's lock is taken over), else the
    live holder's record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with _one_at_a_time(path):
        holder = holder_of(path)
        if holder is not None:
            return holder
        staged = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        staged.write_text(json.dumps(me), encoding="utf-8")
        os.replace(staged, path)  # free, or its holder is gone: the record appears whole
        return None


def release(path: str | Path) -> None:
    """Free the lock at `path` if this process holds it."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    with _one_at_a_time(path):
        try:
            holder = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            path.unlink(missing_ok=True)


def describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
