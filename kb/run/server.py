"""The fork server: a single-threaded interpreter with NumPy and matplotlib preloaded.

Started once by `kb.run.runner.Runner` (`python -m kb.run.server SOCKET`). For every connection it
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
limits (`confine`); the environment it inherits is the allow-listed one `kb.run.runner` gives the server.
"""
from __future__ import annotations

import gc
import io
import os
import selectors
import signal
import socket
import sys

from .child import run_answer, warm_up
from .frames import send_frame
from .limits import confine

# Spare children kept forked and warmed. With one, a run that follows another at once waits for
# the next fork (bench/runner_overhead.py, back to back: 5.1 ms with one spare, 3.3 with two,
# 2.7 with three, against 1.5-2.0 ms for a bare fork); each spare holds ~2 MB of private memory.
SPARES = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


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
        warm_up()
        conn, _ = listener.accept()
        listener.close()
        socket.send_fds(control, [str(os.getpid()).encode()], [conn.fileno()])
        control.close()
        run_answer(conn)
    except BaseException:  # noqa: BLE001 - never fall back into the server loop
        code = 70
    finally:
        os._exit(code)


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
