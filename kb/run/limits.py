"""What a run may use, and when a raised limit makes stored evidence stale.

`Limits` are the configurable ones (time, memory, output: the CLI, pytest and the service's
settings set them); `confine` sets the fixed resource limits every forked child gets before it
takes a run; `cut_short` tells whether stored evidence was stopped by a limit raised since.
"""
from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the fork server imports this module: it needs no evidence record at run time
    from kb.store.evidence import Evidence


@dataclass(frozen=True)
class Limits:
    timeout: float = 30.0  # seconds of wall-clock time per answer
    memory: int = 1 << 30  # bytes a child may allocate beyond the preloaded interpreter
    output: int = 64 << 10  # bytes (UTF-8) of stdout, and of stderr, kept per snippet

    @classmethod
    def of(cls, timeout: float, memory_mb: float, output_kib: float) -> Limits:
        """Limits in the units people set them in (the CLI, pytest and the service's settings)."""
        return cls(timeout=float(timeout), memory=int(memory_mb * 2**20), output=int(output_kib * 2**10))


DEFAULT_MEMORY_MB = Limits.memory >> 20
DEFAULT_OUTPUT_KIB = Limits.output >> 10

# Limits of every run besides the configurable time, memory and output (no answer needs more).
FILE_SIZE = 64 << 20  # bytes in any one file a snippet writes (RLIMIT_FSIZE): a write past it fails
OPEN_FILES = 256  # descriptors (RLIMIT_NOFILE)
WRITES = 256 << 20  # bytes a run may hold in its scratch directory and /tmp together (a tmpfs: `kb.run.child`)
PROCESSES = 64  # processes and threads beyond what the user runs already (RLIMIT_NPROC; not for root)


def cut_short(evidence: Evidence, limits: Limits) -> bool:
    """True if a limit stopped this evidence and has been raised since: it should run again.

    The cache key leaves the limits out (changing a limit must not re-run every answer), so an
    answer that timed out, ran out of memory or flooded its output under a lower limit is the
    one case where evidence for unchanged code is stale.
    """
    ran_with = evidence.get("limits")
    if ran_with is None:
        return False
    snippets = evidence["snippets"]
    return ((evidence["status"] == "timeout" and limits.timeout > ran_with["timeout"])
            or (limits.memory > ran_with["memory"]
                and any(s["error"] is not None and s["error"]["type"] == "MemoryError" for s in snippets))
            or (limits.output > ran_with["output"] and any(s["truncated"] for s in snippets)))


def confine() -> None:
    """Resource limits of a run, set in the spare before it takes one: file size, open files,
    processes, no core dumps (RLIMIT_AS, which depends on the request, is set per run).

    A write past FILE_SIZE fails with `OSError: [Errno 27] File too large` (SIGXFSZ is ignored,
    or it would kill the child). RLIMIT_NPROC counts every process and thread of the user, so
    it is set to what the user runs now plus PROCESSES; the kernel does not enforce it for root.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = {resource.RLIMIT_FSIZE: FILE_SIZE, resource.RLIMIT_NOFILE: OPEN_FILES, resource.RLIMIT_CORE: 0}
    if os.geteuid() != 0:
        limits[resource.RLIMIT_NPROC] = _user_tasks() + PROCESSES
    for which, value in limits.items():
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def _user_tasks() -> int:
    """Processes and threads of this user, as RLIMIT_NPROC counts them."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return count


# Bounds of a whole run (every process it started), watched by the fork server
# (`kb.run.server`, every WATCH_INTERVAL while runs are under way): RLIMIT_AS bounds one process,
# so three forks of 900 MiB each would hold 2.7 GiB under a 1 GiB cap, and as root RLIMIT_NPROC
# is not enforced at all.
RUN_PROCESSES = PROCESSES  # processes (threads not counted) a run may have at once, itself included


def namespace_flags() -> int | None:
    """The unshare(2) flags that give the fork server a PID namespace of its own (`kb.run.server`):
    root needs none other; an unprivileged user also needs a user namespace (the same uid
    mapped inside). None where switched off (`KB_PID_NAMESPACE=off`, for tests of the fallback)."""
    if os.environ.get("KB_PID_NAMESPACE", "on").lower() in ("off", "0", "false", "no"):
        return None
    CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x10000000, 0x20000000
    return CLONE_NEWPID | CLONE_NEWNS | (0 if os.geteuid() == 0 else CLONE_NEWUSER)


def run_processes(pid: int) -> list[int]:
    """`pid` and every process below it (a run's child is a subreaper: nothing leaves its tree
    while it lives)."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as listing:
                    kids = [int(k) for k in listing.read().split()]
            except OSError:
                continue
            found.extend(kids)
            frontier.extend(kids)
    return found


def _pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages counted once across the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


_BASE: list[int] = []  # the fork server's own PSS once preloaded: what every run starts from


def watch_run(pid: int) -> dict[str, object] | None:
    """None while the run of child `pid` keeps within its bounds, else what it exceeded.

    One process is bounded by its own RLIMIT_AS; a run of several is bounded in total: their
    PSS (shared pages counted once) may not exceed the memory limit above the preloaded
    interpreter, and their number may not exceed RUN_PROCESSES. The memory limit is read from
    the child's RLIMIT_AS (set by the child from the request, over what it had mapped).
    """
    processes = run_processes(pid)
    if len(processes) > RUN_PROCESSES:
        return {"what": "processes", "limit": RUN_PROCESSES, "used": len(processes)}
    if len(processes) == 1:
        return None
    try:
        soft = resource.prlimit(pid, resource.RLIMIT_AS)[0]
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:  # the run has not started yet
        return None
    with open("/proc/self/statm") as statm:
        size, resident = (int(n) * os.sysconf("SC_PAGE_SIZE") for n in statm.read().split()[:2])
    if not _BASE:
        _BASE.append(resident)
    mapped = size
    memory = max(soft - mapped, 0)
    used = sum(_pss(p) for p in processes)
    if used > memory + _BASE[0]:
        return {"what": "memory", "limit": memory, "used": used - _BASE[0]}
    return None
