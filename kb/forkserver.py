"""The fork server: a single-threaded interpreter with NumPy and matplotlib preloaded.

Started once by `kb.runner.Runner` (`python -m kb.forkserver SOCKET`). For every connection it
forks a child that runs one answer's snippets and streams the results back on that connection;
forking a warm interpreter costs about a millisecond, against ~100 ms for a fresh Python that
imports NumPy. The server itself never runs authored code and never blocks on a client: the
child reads the request. When a child exits, the server reports its exit status on the child's
connection, so the client can tell a crash or `os._exit` from a clean finish.
Runs in a session of its own until its stdin closes (its parent went away, even by `kill -9`
of its whole process group), then kills every child's process group.

Nothing a snippet starts outlives its run: the server and every child are child subreapers
(Linux `PR_SET_CHILD_SUBREAPER`), so a process that leaves its group (`setsid`, a double fork)
is still reparented to them rather than to init, and the server kills every process reparented
to it, which happens only once the run that started it is over. Each child also gets resource
limits (`confine`); the environment it inherits is the allow-listed one `kb.runner` gives the server.
"""
from __future__ import annotations

import gc
import io
import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .evidence import Error

HEADER = struct.Struct("!I")
# Spare children kept forked and warmed. With one, a run that follows another at once waits for
# the next fork (bench/runner_overhead.py, back to back: 5.1 ms with one spare, 3.3 with two,
# 2.7 with three, against 1.5-2.0 ms for a bare fork); each spare holds ~2 MB of private memory.
SPARES = 2
# Limits of every run besides the configurable time, memory and output (no answer needs more).
FILE_SIZE = 64 << 20  # bytes in any one file a snippet writes (RLIMIT_FSIZE): a write past it fails
OPEN_FILES = 256  # descriptors (RLIMIT_NOFILE)
PROCESSES = 64  # processes and threads beyond what the user runs already (RLIMIT_NPROC; not for root)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """One message, or None when the peer closed the connection."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    data = _recv_exact(sock, HEADER.unpack(header)[0])
    return None if data is None else json.loads(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class CappedText(io.TextIOBase):
    """A text sink that keeps the first `cap` bytes (UTF-8) and notes that more were dropped."""

    def __init__(self, cap: int):
        self.cap, self.size, self.truncated = cap, 0, False
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        written = len(text)
        size = written if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        room = self.cap - self.size
        if size > room:
            self.truncated = True
            # Cut at a byte count, never inside a character.
            text = text.encode("utf-8", "surrogatepass")[:max(room, 0)].decode("utf-8", "ignore")
            size = len(text.encode("utf-8", "surrogatepass"))
        if text:
            self.parts.append(text)
            self.size += size
        return written

    def getvalue(self) -> str:
        return "".join(self.parts)


def show(value: object) -> str | None:
    """A short, readable rendering of a computed value for the page."""
    import numpy as np

    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, np.bool_)):
        text = str(bool(value))
    elif isinstance(value, (float, np.floating)):
        text = f"{float(value):.6g}"
    elif isinstance(value, np.ndarray):
        text = np.array2string(value, precision=4, threshold=12, separator=", ")
    elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, np.number, str)) for v in value):
        inner = ", ".join(show(v) or "" for v in value)
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    else:
        text = repr(value)
    return text if len(text) <= 500 else text[:497] + "..."


def _run_answer(conn: socket.socket) -> None:
    """In the forked child: run the requested snippets, streaming one frame per snippet."""
    import matplotlib.pyplot as plt
    import numpy as np

    request = recv_frame(conn)
    assert request is not None  # the parent sends the request right after connecting
    send_frame(conn, {"pid": os.getpid()})
    limits = request["limits"]
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * page
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limits["memory"],) * 2)
    signal.alarm(int(limits["timeout"]) + 5)  # backstop should the client vanish
    os.chdir(request["workdir"])
    _read_only_answers(request["answers_dir"], request["workdir"])
    np.random.seed(request["seed"])
    random.seed(request["seed"])
    path = request["path"]
    checks: list[dict[str, Any]] = []

    def check(claim: object, condition: object, value: object = None, *, identity: object = None) -> bool:
        """Record a named piece of evidence; a failing check fails the answer, not the snippet's run.
        `identity="why"` marks a check that shows a mathematical identity on purpose (`kb audit`
        lists it instead of trying to make it fail)."""
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != path:
            frame = frame.f_back
        record = {"claim": str(claim), "passed": bool(condition), "value": show(value),
                  "line": frame.f_lineno if frame else None}
        if identity is not None:
            record["identity"] = str(identity)
        checks.append(record)
        return bool(condition)

    namespace = {"__name__": "__main__", "check": check}
    for snippet in request["snippets"]:
        checks.clear()
        result = _run_snippet(snippet, namespace, path, limits, plt)
        result["checks"] = list(checks)
        if result["status"] == "passed" and not all(c["passed"] for c in checks):
            result["status"] = "failed"
        send_frame(conn, {"snippet": result})
        if result["status"] == "error":
            break
    else:
        for number, variant in enumerate(request.get("variants", ())):
            _run_variant(conn, number, variant, namespace, checks, path, limits, plt)
    send_frame(conn, {"done": True})


def _run_variant(conn: socket.socket, number: int, variant: dict[str, Any], namespace: dict[str, Any],
                 checks: list[dict[str, Any]], path: str, limits: dict[str, Any], plt: ModuleType) -> None:
    """`kb audit`: run one variant of the snippets that follow, in a fork of this child, from the
    namespace the snippets before left; frames say `"variant": number`. A variant that runs past
    its `timeout` is killed by SIGALRM; its exit status is reported either way."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.alarm(max(1, int(variant["timeout"] + 0.999)))
            for snippet in variant["snippets"]:
                checks.clear()
                result = _run_snippet(snippet, namespace, path, limits, plt)
                result["checks"] = list(checks)
                if result["status"] == "passed" and not all(c["passed"] for c in checks):
                    result["status"] = "failed"
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # never half a frame
                send_frame(conn, {"variant": number, "snippet": result})
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
                if result["status"] == "error":
                    break
        except BaseException:  # noqa: BLE001 - never fall back into the parent's loop
            code = 70
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    send_frame(conn, {"variant": number, "exit": status})


def _run_snippet(snippet: dict[str, Any], namespace: dict[str, Any], path: str, limits: dict[str, Any],
                 plt: ModuleType) -> dict[str, Any]:
    stdout, stderr = CappedText(limits["output"]), CappedText(limits["output"])
    error = None
    # Pad so that line numbers in tracebacks are line numbers in the .md file.
    source = "\n" * snippet["line"] + snippet["code"]
    started = time.perf_counter()
    sys.stdout, sys.stderr = stdout, stderr
    try:
        exec(compile(source, path, "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - a snippet may raise anything, SystemExit included
        error = _describe(exc, path, limits)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    duration = (time.perf_counter() - started) * 1000
    figures: list[dict[str, str]] = []
    for number in plt.get_fignums():
        figure = plt.figure(number)
        buffer = io.StringIO()
        try:
            figure.savefig(buffer, format="svg", bbox_inches="tight")
        except Exception as exc:  # noqa: BLE001 - a broken figure is evidence of a bug, not a crash
            error = error or _describe(exc, path, limits)
            continue
        figures.append({"name": f"{snippet['index']}-{len(figures)}.svg", "alt": _alt_text(figure),
                        "svg": buffer.getvalue()})
    plt.close("all")
    return {
        "index": snippet["index"], "line": snippet["line"], "code": snippet["code"],
        "status": "error" if error else "passed",
        "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
        "truncated": stdout.truncated or stderr.truncated,
        "duration_ms": round(duration, 3), "error": error, "figures": figures,
    }


def _describe(exc: BaseException, path: str, limits: dict[str, Any]) -> Error:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    message = str(exc)
    if isinstance(exc, MemoryError):
        message = f"{message or 'out of memory'} (memory cap: {limits['memory'] / 2**20:.0f} MiB)"
    if isinstance(exc, SyntaxError) and exc.filename == path:
        line = exc.lineno
    else:
        line = frames[-1].lineno if frames else None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None))
    return {"type": type(exc).__name__, "message": message, "line": line, "traceback": text[-8000:]}


def _alt_text(figure: Figure) -> str:
    """A figure's alt text: its label, else its suptitle, else its axes' titles."""
    label = figure.get_label()  # typed `object`; matplotlib stores a label as str
    if label:
        return str(label)
    if figure.get_suptitle():
        return figure.get_suptitle()
    return "; ".join(ax.get_title() for ax in figure.axes if ax.get_title())


def _preload() -> None:
    """Import and warm what snippets use, once, so every child starts with it in memory."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "kb"  # stable ids: identical code gives identical SVG
    import matplotlib.pyplot as plt
    import numpy.random  # lazily imported by NumPy otherwise: 8 ms in every child

    numpy.random.seed(0)
    figure = plt.figure()
    figure.savefig(io.StringIO(), format="svg")  # import the SVG backend and fonts once
    plt.close("all")
    gc.freeze()  # keep the preloaded objects out of the children's collections: no copy-on-write storms


def serve(socket_path: str) -> None:
    """Keep `SPARES` children forked and waiting in accept(), so a run never waits for a fork.

    A child that takes a connection passes a copy of it to the server over `control`; the
    server forks a spare to replace it, and when the child exits it reports the exit status on that
    copy, so the client can tell a crash or `os._exit` from a clean finish.
    """
    _preload()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of finished runs come back here to be killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(128)
    control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    control.setblocking(False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "taken")
    selector.register(wake_r, selectors.EVENT_READ, "reap")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    children: dict[int, socket.socket | None] = {}  # pid -> the connection it took (None: a spare)

    def inherited() -> list[int]:
        return [control.fileno(), wake_r, wake_w, selector.fileno(), sys.stdin.fileno(),
                *(c.fileno() for c in children.values() if c is not None)]

    def top_up() -> None:
        while sum(conn is None for conn in children.values()) < SPARES:
            children[_fork_spare(listener, child_control, inherited())] = None

    top_up()
    print("ready", flush=True)

    while True:
        for key, _ in selector.select():
            if key.data == "stdin" and not os.read(sys.stdin.fileno(), 1):
                _kill_children(children)
                _kill_orphans({})
                return
            if key.data == "reap":
                os.read(wake_r, 4096)
            _take_connections(control, children)  # before reaping: a quick child may already be gone
            _reap(children, control)
            _kill_orphans(children)
            top_up()


def _kill_children(children: dict[int, socket.socket | None]) -> None:
    """Kill every child's process group: the spare, running answers and what they started.

    The server's parent has gone (closed, or killed with `kill -9`); the server has a session
    of its own, so it is still here to do this. Without it, a process a snippet started would
    outlive everything (the children themselves would die by PR_SET_PDEATHSIG, not theirs).
    """
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)  # each child leads its own session, so its group is its pid
        except ProcessLookupError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)  # a child forked an instant ago may not lead its group yet
        except ProcessLookupError:
            pass


def _kill_orphans(children: dict[int, socket.socket | None]) -> None:
    """Kill the processes reparented to the server, with their groups, until none is left.

    Each child is itself a subreaper, so a process comes back here only when the child whose run
    started it has exited: the run is over, and whatever it left running (a `setsid` daemon, a
    double-forked process) goes now. Killing one may orphan its own children: look again.
    """
    me, own_group = os.getpid(), os.getpgrp()
    while True:
        strays = [pid for pid in _children_of(me) if pid not in children]
        if not strays:
            return
        for pid in strays:
            try:
                group = os.getpgid(pid)
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in strays:  # SIGKILLed: they exit at once; their orphans are listed on the next pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _children_of(pid: int) -> list[int]:
    """The children of the single-threaded process `pid` (Linux' /proc/PID/task/TID/children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []


def _take_connections(control: socket.socket, children: dict[int, socket.socket | None]) -> None:
    """Record the connections spares took: they are spares no longer."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 32, 1)
        except BlockingIOError:
            return
        children[int(message)] = socket.socket(fileno=fds[0])


def _fork_spare(listener: socket.socket, control: socket.socket, close_fds: list[int]) -> int:
    pid = os.fork()
    if pid == 0:
        _child(listener, control, close_fds, os.getppid())
    return pid


def _child(listener: socket.socket, control: socket.socket, close_fds: list[int], server_pid: int) -> None:
    """Wait for one connection, run that answer, exit; never returns."""
    code = 0
    try:
        _die_with_parent(server_pid)
        os.setsid()  # own process group: the client kills the whole tree on timeout
        # Orphans of this run stay here while it lasts, and go to the server (which kills them) after.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        confine()
        for fd in close_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # output below Python's sys.stdout must not reach the server's pipes
        os.dup2(devnull, 2)
        _warm_up()
        conn, _ = listener.accept()
        listener.close()
        socket.send_fds(control, [str(os.getpid()).encode()], [conn.fileno()])
        control.close()
        _run_answer(conn)
    except BaseException:  # noqa: BLE001 - never fall back into the server loop
        code = 70
    finally:
        os._exit(code)


def _warm_up() -> None:
    """Touch, before a request arrives, the memory a run touches: its copy-on-write faults
    then happen while the spare waits, not while a client does."""
    import matplotlib.pyplot as plt
    import numpy as np

    json.loads(json.dumps({"warm": [1.5, "x", None]}))
    exec(compile("\n" + "pass", "warm.md", "exec"), {"__name__": "__main__"})
    np.random.seed(0)
    random.seed(0)
    plt.get_fignums()
    show(np.float64(0.5))
    CappedText(16).write("warm")
    gc.collect(0)


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


def _read_only_answers(answers: str, workdir: str) -> bool:
    """Where the kernel allows it (root, or CAP_SYS_ADMIN), give the run a mount namespace of its
    own in which the answers directory is read-only: a snippet cannot overwrite an answer by
    accident. Elsewhere (an unprivileged user, a container without the capability) nothing
    changes. Mounts made here never reach the service: "/" is made private first, and the
    namespace ends with the run's last process. (Root can remount it: this contains accidents.)
    """
    import ctypes

    if os.path.commonpath([answers, workdir]) == answers:  # the scratch directory must stay writable
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    CLONE_NEWNS, MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20000, 1, 32, 4096, 16384, 1 << 18
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    target = answers.encode()
    return bool(libc.mount(target, target, None, MS_BIND | MS_REC, None) == 0
                and libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) == 0)


def _prctl(option: int, value: int) -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _die_with_parent(server_pid: int) -> None:
    """A spare must not outlive its server (Linux: PR_SET_PDEATHSIG)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:
        os._exit(0)


def _reap(children: dict[int, socket.socket | None], control: socket.socket) -> None:
    """Report exited children's status to their clients."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid not in children:
            continue
        if children[pid] is None:
            # A spare, or a child that took a connection and exited since the last look at
            # `control`: it sent its connection before exiting, so the message is there now.
            _take_connections(control, children)
        conn = children.pop(pid)
        if conn is None:
            continue
        try:
            send_frame(conn, {"exit": status})
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
