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
import shutil
import signal
import socket
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

from .frames import recv_frame, send_frame
from .limits import Limits

SEED = 0
# What a snippet may see of the environment: enough to find programs, a home, a locale, a
# temporary directory and the project; nothing of the service's settings or secrets.
ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "MPLCONFIGDIR")
RUNNER_PREFIX = "kb-forkserver-"  # not the unlocked "kb-runner-" of earlier versions: never swept
_live: weakref.WeakSet[Runner] = weakref.WeakSet()  # runners to clean up on SIGTERM


class Runner:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._server: subprocess.Popen[bytes] | None = None
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
        if ready.readline().strip() != b"ready":
            raise RuntimeError("the runner's fork server failed to start")
        ready.close()

    def run(self, answer: Answer, limits: Limits | None = None,
            variants: list[tuple[list[Snippet], float]] | None = None) -> ev.Evidence:
        """Run every runnable snippet of `answer`; return its evidence (never raises for bad code).
        `limits` overrides the runner's for this run (`kb audit` gives a mutant a short timeout).
        `variants` (`kb audit`): after the snippets, run each list of further snippets in a fork
        of the child, with its own timeout; their results are in the evidence's `variants`
        ({"snippets": {index: result}, "exit": status or None}), in order."""
        limits = limits or self.limits
        forks: list[dict[str, Any]] = [{"snippets": {}, "exit": None} for _ in variants or ()]
        if not answer.runnable and not variants:  # nothing to isolate: no child process
            return self._evidence(answer, {}, None, time.monotonic(), limits)
        sock = self._connect()  # may start the server: not counted against the answer's time
        started = time.monotonic()
        deadline = started + limits.timeout
        workdir = tempfile.mkdtemp(prefix=f"kb-{answer.slug}-")
        link = os.path.join(self._dir, os.path.basename(workdir))
        os.symlink(workdir, link)  # so that a sweep finds it should this process die mid-run
        results: dict[int, ev.SnippetEvidence] = {}
        fault: tuple[str, str, str] | None = None  # (status, error type, message) of a run cut short
        group: int | None = None
        try:
            send_frame(sock, {
                "path": answer.path, "seed": SEED, "workdir": workdir, "limits": asdict(limits),
                "answers_dir": os.path.dirname(os.path.abspath(answer.path)),
                "snippets": [{"index": s.index, "line": s.line, "code": s.code} for s in answer.runnable],
                "variants": [{"timeout": timeout, "snippets": [{"index": s.index, "line": s.line, "code": s.code}
                                                               for s in snippets]} for snippets, timeout in variants or ()],
            })
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    frame = recv_frame(sock)
                except TimeoutError:
                    fault = ("timeout", "TimeoutError",
                             f"the answer ran longer than its {limits.timeout:g} s limit and was stopped")
                    break
                if frame is None:
                    fault = ("error", "RunnerError", "the runner's fork server stopped unexpectedly")
                    break
                if "variant" in frame:
                    fork = forks[frame["variant"]]
                    if "snippet" in frame:
                        fork["snippets"][frame["snippet"]["index"]] = frame["snippet"]
                    else:
                        fork["exit"] = frame["exit"]
                elif "pid" in frame:
                    group = frame["pid"]
                elif "snippet" in frame:
                    results[frame["snippet"]["index"]] = frame["snippet"]
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
        return evidence

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
