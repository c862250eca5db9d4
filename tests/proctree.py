"""Process trees read from Linux's /proc: what a test's subprocess started, and what lives on.

For the tests that kill or interrupt a process and check that its workers and their ngspice
processes end with it. A zombie (ended, not yet reaped by its new parent) counts as ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of every thread of it); none if it has ended."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # the thread or the process ended meanwhile
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children, grandchildren, ..."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def command_line(pid: int) -> str:
    """``pid``'s command line, arguments joined by spaces ('' if it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (not ended, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_for_descendants(pid: int, marker: str, count: int, timeout_s: float) -> list[int]:
    """Wait until ``count`` descendants of ``pid`` have ``marker`` in their command line;
    return all of ``pid``'s descendants then (fewer markers if ``timeout_s`` ran out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = descendants(pid)
        if sum(marker in command_line(p) for p in found) >= count \
                or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def survivors(pids: list[int], timeout_s: float) -> dict[int, str]:
    """Those of ``pids`` still alive after up to ``timeout_s`` seconds, with their command
    lines (empty when all have ended)."""
    deadline = time.monotonic() + timeout_s
    while True:
        living = [p for p in pids if alive(p)]
        if not living or time.monotonic() > deadline:
            return {p: command_line(p) for p in living}
        time.sleep(0.05)


def kill(pids: list[int]) -> None:
    """SIGKILL those of ``pids`` (processes the test started) that are still alive."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def kill_parent(proc: subprocess.Popen, below: list[int], timeout_s: float = 5.0) -> dict[int, str]:
    """``kill -9`` ``proc`` alone and reap it; return those of ``below`` (its descendants)
    still alive ``timeout_s`` seconds later (see :func:`survivors`)."""
    proc.kill()
    proc.wait(timeout=10)
    return survivors(below, timeout_s)


def clean_up(proc: subprocess.Popen, below: list[int]) -> None:
    """Whatever a test did: nothing it started runs on (``proc`` leads a session of its own,
    ``below`` are its descendants), and ``proc``'s pipes are closed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group has ended
    proc.communicate()
    kill(below)
