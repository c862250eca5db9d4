"""Child processes that end when the process that started them ends (private, stdlib only).

A process whose parent is killed (``kill -9``, the OOM killer) is re-parented to init and
goes on running: a calibration's pool workers, their ngspice hosts and ``ngspice -b`` solves
would keep their memory and CPU for nobody. Two mechanisms make a child follow its parent:

* **Parent-death signal** (Linux only): ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` asks the kernel
  to kill this process the moment its parent goes. The kernel means the parent *thread*,
  the one that started the child: use it only where that thread outlives the child (a
  ``ProcessPoolExecutor`` started and shut down by one call, a ``Popen`` waited for by the
  thread that made it). It survives ``exec``, so :func:`parent_death_preexec` gives it to a
  program we cannot change (``ngspice -b``). Right after setting it, the child checks that
  its parent has not already gone (which the signal would not report).
* **Watchdog thread** (everywhere): a daemon thread compares ``os.getppid()`` with the
  parent's pid every ``poll_s`` seconds and ends the process when they differ. It sees the
  death of the parent *process*, whatever thread started the child, within ``poll_s``.

A process ended this way ends at once (``os._exit``, or the kernel's SIGKILL): no
``finally`` blocks, no atexit handlers. Its own children follow it by the same means.

This file imports only the standard library: the ngspice host (``_worker.py``) loads it by
path, without the package on ``sys.path``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["EXIT_STATUS", "exit_with_parent", "parent_death_preexec"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_KILL = int(getattr(signal, "SIGKILL", 9))  # used on Linux only
EXIT_STATUS = 70
"""Exit status of a process whose watchdog saw its parent go (EX_SOFTWARE)."""


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


def _watch(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(EXIT_STATUS)


def exit_with_parent(parent_pid: int, *, death_signal: bool = True,
                     poll_s: float = 0.25) -> None:
    """Make this process end when process ``parent_pid`` (its parent) ends.

    ``death_signal`` also sets the parent-death signal (Linux; see the module docstring
    for when the thread that started this process must outlive it). Always starts the
    watchdog thread. Ends this process at once when its parent is already gone.
    """
    if isinstance(parent_pid, bool) or not isinstance(parent_pid, int) or parent_pid <= 0:
        raise ValueError(f"parent_pid = {parent_pid!r} must be a process id (an int > 0)")
    if not poll_s > 0:
        raise ValueError(f"poll_s = {poll_s!r} must be a positive number of seconds")
    prctl = _prctl() if death_signal else None
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, _KILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(EXIT_STATUS)
    threading.Thread(target=_watch, args=(parent_pid, poll_s), name="circuitsim-lifeline",
                     daemon=True).start()


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``Popen(preexec_fn=...)`` that gives the child the parent-death signal, or None
    where there is none (not Linux). The thread that calls ``Popen`` must wait for the
    child: the signal follows that thread."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def preexec() -> None:
        # Runs in the forked child before exec: only a system call, no locks, no imports.
        prctl(_PR_SET_PDEATHSIG, _KILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(EXIT_STATUS)

    return preexec
