"""A lock per grid stage, so two runners of one grid (a second terminal, a resubmitted SLURM job, a notebook beside
the grid) never run the same stage into the same folder at once.

The lock is a small JSON file created with O_EXCL, holding who runs the stage: pid, host, the process's start time
and when the stage started. Another runner finds it and leaves the stage to its holder. A lock whose holder is
gone (same host, and no process with that pid and start time) is taken over; a lock from another host cannot be
checked from here and counts as held until it is removed (`grid status` shows it, with its holder).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any


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


def acquire(path: str | Path) -> dict[str, Any] | None:
    """Take the lock at `path` for this process: None when taken (a dead holder's lock is taken over), else the
    live holder's record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = holder_of(path)
            if holder is not None:
                return holder
            path.unlink(missing_ok=True)  # its holder is gone: take it over
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return None
    return holder_of(path) or {"pid": None, "host": "?", "since": "?"}  # lost three races: leave it


def release(path: str | Path) -> None:
    """Free the lock at `path` if this process holds it."""
    path = Path(path)
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
