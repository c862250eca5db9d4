"""Finding ngspice: the program and the shared library, their versions and KLU.

:func:`check_ngspice` (re-exported by :mod:`circuitsim.runner` and :mod:`circuitsim`)
probes both artefacts (``ngspice -v``, and loading the library in a short-lived worker
process of the shared backend) once per process and caches what it found;
:func:`_clear_caches` forgets it. The backends use the same lookups and the same judgement
when they start ngspice: the shared backend loads the library :func:`_find_library` names,
the batch backend runs the program :func:`_executable_facts` found. Whatever is missing,
too old (:data:`MIN_VERSION`) or built without KLU is refused with a
:class:`~netlists.errors.SimulatorNotFoundError` that carries install instructions.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from netlists.errors import SimulatorError, SimulatorNotFoundError

__all__ = ["MIN_VERSION", "NgspiceInfo", "check_ngspice"]

MIN_VERSION = 42
"""Oldest ngspice accepted; KLU is required in addition (checked separately)."""

_INSTALL_HINT = (
    "circuitsim needs ngspice >= {min_version} built with the KLU solver: both the program "
    "`ngspice` and the shared library libngspice.\n"
    "  Debian 12 (bookworm): run `bash scripts/setup.sh`, or enable bookworm-backports and run\n"
    "      sudo apt-get install -t bookworm-backports ngspice libngspice0\n"
    "  newer Debian or Ubuntu: sudo apt-get install ngspice libngspice0\n"
    "A libngspice in a non-standard place can be named with NGSPICE_LIBRARY_PATH."
)


@dataclass(frozen=True)
class NgspiceInfo:
    """What :func:`check_ngspice` found.

    ``version`` is the older of the program's and the library's major versions; ``klu`` is
    true when both were built with KLU.
    """

    version: int
    klu: bool
    executable: str | None
    library: str | None


def _find_library() -> str | None:
    """Path (or loadable soname) of libngspice, or None.

    ``NGSPICE_LIBRARY_PATH`` (PySpice's variable) wins; then the usual library folders
    (the Python prefix first, for conda); then the dynamic linker's cache.
    """
    env = os.environ.get("NGSPICE_LIBRARY_PATH")
    if env:
        return env.replace("{}", "")
    if sys.platform == "darwin":
        names = ("libngspice.0.dylib", "libngspice.dylib")
        folders = [Path(sys.prefix, "lib"), Path("/opt/homebrew/lib"), Path("/usr/local/lib")]
    else:
        names = ("libngspice.so.0", "libngspice.so")
        multiarch = sysconfig.get_config_var("MULTIARCH") or ""
        folders = [Path(sys.prefix, "lib"), Path("/usr/local/lib")]
        if multiarch:
            folders.append(Path("/usr/lib", multiarch))
        folders += [Path("/usr/lib64"), Path("/usr/lib")]
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return str(candidate)
    return ctypes.util.find_library("ngspice")


def _find_executable() -> str | None:
    """Path of the ``ngspice`` program on ``PATH``, or None."""
    return shutil.which("ngspice")


@dataclass(frozen=True)
class _Found:
    """Facts about one ngspice artefact; ``problem`` says why it is unusable, if it is."""

    path: str | None
    version: int
    klu: bool
    problem: str


@functools.lru_cache(maxsize=None)
def _executable_facts() -> _Found:
    path = _find_executable()
    if path is None:
        return _Found(None, 0, False, "the ngspice program was not found on PATH")
    try:
        done = subprocess.run([path, "-v"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return _Found(path, 0, False, f"`{path} -v` failed: {err}")
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    match = re.search(r"ngspice-(\d+)", text)
    if match is None:
        return _Found(path, 0, False, f"`{path} -v` printed no version: {text.strip()[:200]!r}")
    return _Found(path, int(match.group(1)), "KLU" in text, "")


@functools.lru_cache(maxsize=None)
def _library_facts() -> _Found:
    path = _find_library()
    if path is None:
        return _Found(None, 0, False, "the shared library libngspice was not found")
    # The probe loads the library the way the shared backend does: in a worker process.
    from circuitsim.backends.shared import _Worker

    try:
        worker = _Worker(path)
    except SimulatorError as err:
        return _Found(path, 0, False, str(err))
    worker.close()
    return _Found(path, int(worker.info.get("version", 0)), bool(worker.info.get("klu")), "")


def _judge_found(found: _Found, what: str, min_version: int) -> str:
    """Why ``found`` is unusable (empty when it is fine)."""
    if found.problem:
        return found.problem
    if found.version < min_version:
        return f"{what} {found.path} is ngspice-{found.version}, older than ngspice-{min_version}"
    if not found.klu:
        return f"{what} {found.path} (ngspice-{found.version}) was built without the KLU solver"
    return ""


def _not_found(problems: Sequence[str], min_version: int) -> SimulatorNotFoundError:
    return SimulatorNotFoundError(
        "; ".join(problems) + ".\n" + _INSTALL_HINT.format(min_version=min_version))


def check_ngspice(*, min_version: int = MIN_VERSION) -> NgspiceInfo:
    """Check that both the ngspice program and libngspice are usable; return what was found.

    The probe (``ngspice -v``, and loading the library in a short-lived worker process) runs
    once per process and is cached. Raises :class:`SimulatorNotFoundError`, with install
    instructions, when either is missing, older than ``min_version``, or built without KLU.
    """
    if isinstance(min_version, bool) or not isinstance(min_version, int) or min_version < 1:
        raise ValueError(f"min_version = {min_version!r} must be a positive whole number")
    exe, lib = _executable_facts(), _library_facts()
    problems = [p for p in (_judge_found(exe, "program", min_version),
                            _judge_found(lib, "library", min_version)) if p]
    if problems:
        raise _not_found(problems, min_version)
    return NgspiceInfo(version=min(exe.version, lib.version), klu=True,
                       executable=exe.path, library=lib.path)


def _clear_caches() -> None:
    """Forget what the probes found (tests, or after installing ngspice mid-session)."""
    _executable_facts.cache_clear()
    _library_facts.cache_clear()

