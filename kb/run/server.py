"""The fork server: a single-threaded interpreter with NumPy and matplotlib preloaded.

Started once by `kb.run.runner.Runner` (`python -m kb.run.server SOCKET`). For every connection it
forks a child that runs one answer's snippets and streams the results back on that connection;
forking a warm interpreter costs about a millisecond, against ~100 ms for a fresh Python that
imports NumPy. The server itself never runs authored code and never blocks on a client: the
child reads the request. When a child exits, the server reports its exit status on the child's
connection, so the client can tell a crash or `os._exit` from a clean finish.
Runs in a session of its own until its stdin closes (its parent went away, even by `kill -9`
of its whole process group), then kills every child's process group.

Where the kernel allows it (root; else an unprivileged user namespace), the server is process 1
of a PID namespace of its own (`main`): its children cannot name it, let alone signal or stop it
(the kernel drops signals a namespace's processes send to its init), they see only their own
run's processes in `/proc`, and should the server die, the kernel kills everything in the
namespace, so nothing a snippet started can outlive it under init. A small outer process stays
in the caller's namespace, waits for the server and prints its pid as the caller sees it.

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
from .limits import confine, namespace_flags, run_processes, watch_run

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


def serve(socket_path: str, host_pid: int | None = None) -> None:
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
    print(f"ready {host_pid or os.getpid()}", flush=True)

    while True:
        running = [pid for pid, conn in children.items() if conn is not None]
        for key, _ in selector.select(WATCH_INTERVAL if running else None):
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
        _watch(children, control)


WATCH_INTERVAL = 0.1  # seconds between looks at the memory and processes of the runs under way


def _watch(children: dict[int, socket.socket | None], control: socket.socket) -> None:
    """Stop a run whose processes together exceed its bounds (`kb.run.limits.watch_run`)."""
    _take_connections(control, children)
    for pid, conn in list(children.items()):
        if conn is None:
            continue
        over = watch_run(pid)
        if over is None:
            continue
        try:
            send_frame(conn, {"bounds": over})
        except OSError:
            pass
        for process in run_processes(pid):  # escaped groups too, not only the child's
            try:
                os.kill(process, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _kill_children({pid: conn})


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
            # Look without reaping: a zombie keeps its pid, and so its group id, reserved while its
            # group is killed (after the reap, the id could be a new spare's).
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        if info is None:
            break
        pid = info.si_pid
        if pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            pid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if pid == 0 or pid not in children:
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


def main(socket_path: str) -> None:
    """Serve as process 1 of a PID namespace of its own where the kernel allows it, else as is."""
    flags = namespace_flags()
    if flags is None or not _namespace_works(flags):
        serve(socket_path)
        return
    _unshare(flags)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            host_pid = int(os.readlink("/proc/self"))  # before /proc shows only this namespace
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _mount_proc()
            serve(socket_path, host_pid)
            code = 0
        finally:
            os._exit(code)
    # The outer process: it only waits, and ends as the server ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x10000000, 0x20000000


def _namespace_works(flags: int) -> bool:
    """Try the namespace once in a throwaway child (a failed unshare cannot be undone here)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _unshare(flags)
            inner = os.fork()
            if inner == 0:
                try:
                    _mount_proc()
                    os._exit(0)
                finally:
                    os._exit(1)
            code = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _unshare(flags: int) -> None:
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    if ctypes.CDLL(None, use_errno=True).unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")
    if flags & CLONE_NEWUSER:  # the same uid and gid inside: files and limits stay the user's
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)


def _mount_proc() -> None:
    """In the namespace's process 1: a private /proc that lists only this namespace's processes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
    if (libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0
            or libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0):
        raise OSError(ctypes.get_errno(), "mounting /proc failed")


if __name__ == "__main__":
    main(sys.argv[1])
