"""Machine resources a run must respect: memory for its worker pool, and workers that die with their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

from gcert.errors import InputError

GIB = 1024**3
DEFAULT_WORKER_GB = 1.5
"""Memory a worker is assumed to need at least: torch, the model and the generator, a certifier's working set."""

MAX_MEMORY_ENV = "GCERT_MAX_MEMORY"


def meminfo(field: str = "MemAvailable") -> int | None:
    """A field of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss(peak: bool = True, pid: int | str = "self") -> int | None:
    """Resident memory of a process in bytes (VmHWM, the peak, or VmRSS), from /proc; None where unknown."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def max_memory_gb(value: float | None = None) -> float | None:
    """The user's memory cap in GB: ``value`` (``--max-memory``), else ``$GCERT_MAX_MEMORY``, else None."""
    if value is None:
        raw = os.environ.get(MAX_MEMORY_ENV, "").strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"{MAX_MEMORY_ENV}={raw!r} is not a number; give GB, e.g. {MAX_MEMORY_ENV}=8") from None
        what = f"{MAX_MEMORY_ENV}={raw}"
    else:
        what = f"--max-memory {value:g}"
    if not (value > 0 and value < float("inf")):
        raise InputError(f"{what} must be a finite number of GB > 0, e.g. 8")
    return float(value)


def per_worker_bytes() -> int:
    """What one worker is expected to need: this process's peak so far (it built the same context the workers
    build, and prepared every certifier once), with headroom, and never less than :data:`DEFAULT_WORKER_GB`."""
    measured = rss(peak=True)
    floor = int(DEFAULT_WORKER_GB * GIB)
    return max(floor, int(1.25 * measured)) if measured else floor


def workers_for_memory(wanted: int, cap_gb: float | None = None, need: int | None = None) -> tuple[int, str | None]:
    """At most ``wanted`` workers that fit in memory: the budget is ``cap_gb`` when given, else 90 % of
    MemAvailable (the user's cap also never exceeds what is available). Returns the count and, when it is
    below ``wanted``, one line saying why."""
    need = need or per_worker_bytes()
    available = meminfo("MemAvailable")
    budgets = [b for b in (cap_gb * GIB if cap_gb else None, 0.9 * available if available else None) if b]
    if not budgets:
        return wanted, None
    budget = min(budgets)
    fits = max(1, int(budget // need))
    if fits >= wanted:
        return wanted, None
    source = f"--max-memory {cap_gb:g} GB" if cap_gb and cap_gb * GIB <= budget else \
        f"{budget / GIB:.1f} GB available"
    return fits, (f"{wanted} workers would need ~{wanted * need / GIB:.1f} GB (~{need / GIB:.1f} GB each) but "
                  f"{source} allows {fits}; using {fits} (set --max-memory or {MAX_MEMORY_ENV} to change)")


# --- workers that die with their parent ---------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Make this (worker) process exit when ``parent_pid`` dies, even by kill -9.

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon
    thread also polls ``os.getppid()`` (a dead parent re-parents us to init or a subreaper) and exits.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="gcert-parent-watchdog", daemon=True).start()
