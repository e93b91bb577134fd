"""Run an answer's snippets in an isolated child process and collect their evidence.

`Runner.run(answer)` asks the fork server (`kb.run.server`) for a fresh child, which runs the
snippets in one namespace in a temporary working directory. The runner enforces the limits:
it kills the child's whole process group at the wall-clock timeout (and after every run, so
nothing a snippet started outlives it); the child itself caps memory (RLIMIT_AS) and output.
Safe to call from many threads: each run has its own connection and child.

The fork server, and so every snippet, sees only an allow-listed environment (`ENVIRONMENT`):
no service setting or secret. A runner's directory (the server's socket, links to the scratch
directories of runs in progress) is locked while the runner lives; a new runner removes those
of runners that died without cleaning up (`kill -9`), and SIGTERM cleans up before exiting.
"""
from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from types import FrameType
from typing import Any

from kb.format.answer import Answer, Snippet
from kb.store import evidence as ev

from .frames import MAX_FRAME, FrameTooLarge, recv_frame, send_frame
from .limits import Limits

SEED = 0
# What a snippet may see of the environment: enough to find programs, a home, a locale, a
# temporary directory and the project; nothing of the service's settings or secrets.
ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "MPLCONFIGDIR", "KB_PID_NAMESPACE")
START_TIMEOUT = 120.0  # seconds a fork server may take to preload (a cold font cache takes ~10)
PICKUP_POLL = 0.25  # seconds between looks at the fork server while a run waits for a child
RUNNER_PREFIX = "kb-forkserver-"  # not the unlocked "kb-runner-" of earlier versions: never swept
_live: weakref.WeakSet[Runner] = weakref.WeakSet()  # runners to clean up on SIGTERM


class Runner:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._server: subprocess.Popen[bytes] | None = None
        self._server_pid: int | None = None  # the serving process (inside its PID namespace, if any)
        # A Unix socket path is limited to ~107 bytes: a deep TMPDIR falls back to /tmp.
        short = "/tmp" if len(tempfile.gettempdir()) > 60 and os.path.isdir("/tmp") else None
        sweep(short or tempfile.gettempdir())
        self._lock_fd: int | None
        self._dir, self._lock_fd = _locked_dir(short or tempfile.gettempdir())
        # Removed by close(), or at exit for a runner never closed (a gunicorn or Flask worker's).
        weakref.finalize(self, _remove_runner_dir, self._dir)
        self._socket = os.path.join(self._dir, "forkserver.sock")
        _live.add(self)
        clean_up_on_sigterm()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        """Stop the fork server (it kills every child first) and remove the runner's files."""
        server, self._server = self._server, None
        if server is not None:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
        _remove_runner_dir(self._dir)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _connect(self) -> socket.socket:
        """A connection to a live fork server, (re)starting it if needed."""
        with self._lock:
            if self._server is None or self._server.poll() is not None:
                if self._server is not None and self._server.stdin is not None:
                    self._server.stdin.close()  # the pipe of a server that died
                self._start_server()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._socket)
            return sock

    def _start_server(self) -> None:
        if os.path.exists(self._socket):
            os.unlink(self._socket)
        # One BLAS thread: children must not inherit a thread pool, and timings stay comparable.
        env = {name: value for name, value in os.environ.items() if name in ENVIRONMENT or name.startswith("LC_")}
        env |= {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": str(SEED)}
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._server = subprocess.Popen(
            [sys.executable, "-m", "kb.run.server", self._socket],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=self._dir,
            start_new_session=True)  # a kill of the caller's group must leave it to clean up
        ready = self._server.stdout
        assert ready is not None  # stdout=PIPE
        # A server that hangs while preloading must not hang every run of this process with it.
        line = ready.readline() if select.select([ready], [], [], START_TIMEOUT)[0] else b""
        words = line.split()
        if len(words) != 2 or words[0] != b"ready":
            self._server.kill()
            self._server.wait()
            self._server = None
            raise RuntimeError("the runner's fork server failed to start"
                               + ("" if line else f" within {START_TIMEOUT:g} s"))
        self._server_pid = int(words[1])
        ready.close()

    def run(self, answer: Answer, limits: Limits | None = None,
            variants: list[tuple[list[Snippet], float]] | None = None) -> ev.Evidence:
        """Run every runnable snippet of `answer`; return its evidence (never raises for bad code).

        `limits` overrides the runner's for this run (`kb audit` gives a mutant a short timeout).
        `variants` (`kb audit`): after the snippets, run each list of further snippets in a fork
        of the child, with its own timeout; their results are in the evidence's `variants`
        ({"snippets": {index: result}, "exit": status or None}), in order.

        A fork server that is wedged (stopped by a signal, dead) is replaced and the answer run
        again, once; should that fail too, the evidence says so and is marked `transient` (the
        fault is the runner's, not the answer's: it is not stored, never published as a timeout).
        """
        limits = limits or self.limits
        if not answer.runnable and not variants:  # nothing to isolate: no child process
            return self._evidence(answer, {}, None, time.monotonic(), limits)
        evidence = self._run_once(answer, limits, variants)
        if evidence.get("transient"):
            evidence = self._run_once(answer, limits, variants)
        return evidence

    def _wedged(self) -> str | None:
        """Why the fork server cannot take runs (dead, or stopped by a signal), else None."""
        server = self._server
        if server is None or server.poll() is not None:
            return "stopped"
        try:
            with open(f"/proc/{self._server_pid}/stat") as file:
                stat = file.read()
        except OSError:
            return "gone"
        state = stat[stat.rindex(")") + 2:].split()[0]
        return {"T": "stopped by a signal", "t": "stopped by a tracer", "Z": "exited"}.get(state)

    def _restart(self, server: subprocess.Popen[bytes] | None) -> None:
        """Replace the fork server `server` (if it is still the current one)."""
        with self._lock:
            if self._server is server and server is not None:
                self._server = None
                server.kill()  # the outer process; its namespace's init dies with it (PDEATHSIG)
                if self._server_pid is not None:
                    try:
                        os.kill(self._server_pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                server.wait()
                if server.stdin is not None:
                    server.stdin.close()

    def _run_once(self, answer: Answer, limits: Limits,
                  variants: list[tuple[list[Snippet], float]] | None) -> ev.Evidence:
        forks: list[dict[str, Any]] = [{"snippets": {}, "exit": None} for _ in variants or ()]
        sock = self._connect()  # may start the server: not counted against the answer's time
        server = self._server
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the child's pid, as seen here
        started = time.monotonic()
        deadline = started + limits.timeout
        workdir = tempfile.mkdtemp(prefix=f"kb-{answer.slug}-")
        link = os.path.join(self._dir, os.path.basename(workdir))
        os.symlink(workdir, link)  # so that a sweep finds it should this process die mid-run
        results: dict[int, ev.SnippetEvidence] = {}
        fault: tuple[str, str, str] | None = None  # (status, error type, message) of a run cut short
        group: int | None = None
        transient = False
        try:
            try:
                send_frame(sock, {
                    "path": answer.path, "seed": SEED, "workdir": workdir, "limits": asdict(limits),
                    "answers_dir": os.path.dirname(os.path.abspath(answer.path)),
                    "snippets": [{"index": s.index, "line": s.line, "code": s.code} for s in answer.runnable],
                    "variants": [{"timeout": timeout, "snippets": [{"index": s.index, "line": s.line, "code": s.code}
                                                                   for s in snippets]} for snippets, timeout in variants or ()],
                })
                group, why = self._pickup(sock, deadline)
            except (ConnectionError, BrokenPipeError):  # the server died with the connection in its backlog
                group, why = None, "had exited"
            if group is None:
                fault = ("error", "RunnerError", f"the runner's fork server {why}; no child took the run")
                transient = True
                if why != "was too busy":
                    self._restart(server)
            while fault is None:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    frame = recv_frame(sock, MAX_FRAME + 4 * limits.output)
                except TimeoutError:
                    fault = ("timeout", "TimeoutError",
                             f"the answer ran longer than its {limits.timeout:g} s limit and was stopped")
                    break
                except FrameTooLarge as exc:
                    fault = ("error", "EvidenceTooLarge", str(exc))
                    break
                except ConnectionError:  # the server died (it holds a copy of the connection)
                    frame = None
                if frame is None:
                    fault = ("error", "RunnerError", "the runner's fork server stopped unexpectedly")
                    transient = True
                    self._restart(server)
                    break
                if "variant" in frame:
                    fork = forks[frame["variant"]]
                    if "snippet" in frame:
                        fork["snippets"][frame["snippet"]["index"]] = frame["snippet"]
                    else:
                        fork["exit"] = frame["exit"]
                elif "pid" in frame:
                    pass  # the child's own pid, in its namespace: `group` is the one seen from here
                elif "bounds" in frame:
                    fault = ("error", *_bounds_message(frame["bounds"]))
                    break
                elif "snippet" in frame:
                    results[frame["snippet"]["index"]] = ev.bounded(frame["snippet"])
                elif "done" in frame:
                    break
                elif "exit" in frame:
                    fault = ("error", "ProcessDied", _exit_message(frame["exit"]))
                    break
        finally:
            sock.close()
            if group is not None:
                _kill_group(group)
            shutil.rmtree(workdir, ignore_errors=True)
            _unlink(link)
        evidence = self._evidence(answer, results, fault, started, limits)
        if variants:
            evidence["variants"] = forks
        if transient:
            evidence["transient"] = True
        return evidence

    def _pickup(self, sock: socket.socket, deadline: float) -> tuple[int | None, str]:
        """(the pid of the child that took the run, as seen from here; "") or (None, why not).

        Peeks at the child's first frame with its credentials (SO_PASSCRED: the kernel gives its
        pid in this process's PID namespace), looking at the fork server meanwhile: a server
        stopped by a signal or dead is a fault of the runner, found in a fraction of a second,
        and so is a run no child took before the answer's deadline.
        """
        while True:
            sock.settimeout(min(PICKUP_POLL, max(deadline - time.monotonic(), 0.001)))
            try:
                data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(12), socket.MSG_PEEK)
            except TimeoutError:
                why = self._wedged()
                if why is not None:
                    return None, f"was {why}" if why.startswith("stopped") else f"had {why}"
                if time.monotonic() >= deadline:
                    return None, "was too busy"
                continue
            if not data:
                return None, "closed the connection"
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    return struct.unpack("3i", payload[:12])[0], ""
            return None, "sent no credentials"

    def _evidence(self, answer: Answer, results: dict[int, ev.SnippetEvidence], fault: tuple[str, str, str] | None,
                  started: float, limits: Limits | None = None) -> ev.Evidence:
        snippets: list[ev.SnippetEvidence] = []
        reached = True
        for snippet in answer.snippets:
            if snippet.index in results:
                result = results[snippet.index]
                reached = result["status"] != "error"
            elif snippet.runs and reached and fault:
                status, error_type, message = fault
                result = ev.unreached(snippet, status, {"type": error_type, "message": message,
                                                        "line": snippet.line, "traceback": None})
                reached = False
            else:
                result = ev.unreached(snippet, "skipped" if snippet.runs else "norun")
            result["attrs"] = sorted(snippet.attrs)
            snippets.append(result)
        return ev.record(answer, snippets, (time.monotonic() - started) * 1000, asdict(limits or self.limits))


def _bounds_message(over: dict[str, Any]) -> tuple[str, str]:
    """(error type, message) for a run the fork server stopped at a bound of the whole run."""
    if over["what"] == "memory":
        return ("MemoryError", f"the answer's processes together used {over['used'] / 2**20:.0f} MiB, over its memory "
                f"cap ({over['limit'] / 2**20:.0f} MiB for the whole run); it was stopped")
    return ("ResourceError", f"the answer ran {over['used']} processes at once, over the limit of {over['limit']} "
            "for the whole run; it was stopped")


def _exit_message(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:  # a real-time signal has no name
            name = str(number)
        return f"the snippet's process was killed by signal {name} (an interpreter crash or a kill)"
    return f"the snippet's process exited with code {os.WEXITSTATUS(status)} before finishing (os._exit or sys.exit in C code)"


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _locked_dir(parent: str) -> tuple[str, int]:
    """A new runner directory in `parent`, locked before it gets its sweepable name."""
    staging = tempfile.mkdtemp(prefix=".kb-new-", dir=parent)
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    final = os.path.join(parent, RUNNER_PREFIX + os.path.basename(staging)[len(".kb-new-"):])
    os.rename(staging, final)
    return final, fd


def sweep(parent: str) -> int:
    """Remove the runner directories in `parent` whose runner died (their lock is free), with the
    scratch directories they link to; return how many. A live runner's directory is locked."""
    swept = 0
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(RUNNER_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            _remove_runner_dir(entry.path)
            swept += 1
        finally:
            os.close(fd)
    return swept


def _remove_runner_dir(path: str) -> None:
    """A runner's directory and the scratch directories of the runs it links to."""
    try:
        links = [e.path for e in os.scandir(path) if e.is_symlink()]
    except OSError:
        links = []
    for link in links:
        target = os.readlink(link)
        if os.path.basename(target).startswith("kb-"):  # only what a run created
            shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def clean_up_on_sigterm() -> None:
    """On SIGTERM, stop every runner (their fork servers kill what snippets started) and remove
    their files, then die of SIGTERM as before. Only where nobody handles SIGTERM yet (gunicorn
    workers do, and exit cleanly), and only from the main thread (Python's rule for handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        for runner in list(_live):
            runner._stop()  # not close(): the interrupted code may hold the runner's lock
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminate)
