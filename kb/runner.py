"""Run an answer's snippets in an isolated child process and collect their evidence.

`Runner.run(answer)` asks the fork server (`kb.forkserver`) for a fresh child, which runs the
snippets in one namespace in a temporary working directory. The runner enforces the limits:
it kills the child's whole process group at the wall-clock timeout (and after every run, so
nothing a snippet started outlives it); the child itself caps memory (RLIMIT_AS) and output.
Safe to call from many threads: each run has its own connection and child.
"""
from __future__ import annotations

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
from dataclasses import asdict, dataclass

from . import evidence as ev
from .forkserver import recv_frame, send_frame

SEED = 0


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


class Runner:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None
        # A Unix socket path is limited to ~107 bytes: a deep TMPDIR falls back to /tmp.
        short = "/tmp" if len(tempfile.gettempdir()) > 60 and os.path.isdir("/tmp") else None
        self._dir = tempfile.mkdtemp(prefix="kb-runner-", dir=short)
        # Removed by close(), or at exit for a runner never closed (a gunicorn or Flask worker's).
        weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self._socket = os.path.join(self._dir, "forkserver.sock")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stdin.close()
                try:
                    self._server.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._server.kill()
                self._server = None
        shutil.rmtree(self._dir, ignore_errors=True)

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
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": str(SEED)}
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._server = subprocess.Popen(
            [sys.executable, "-m", "kb.forkserver", self._socket],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=self._dir,
            start_new_session=True)  # a kill of the caller's group must leave it to clean up
        if self._server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the runner's fork server failed to start")
        self._server.stdout.close()

    def run(self, answer) -> dict:
        """Run every runnable snippet of `answer`; return its evidence (never raises for bad code)."""
        if not answer.runnable:  # nothing to isolate: no child process
            return self._evidence(answer, {}, None, time.monotonic())
        sock = self._connect()  # may start the server: not counted against the answer's time
        started = time.monotonic()
        deadline = started + self.limits.timeout
        workdir = tempfile.mkdtemp(prefix=f"kb-{answer.slug}-")
        results: dict[int, dict] = {}
        fault, group = None, None
        try:
            send_frame(sock, {
                "path": answer.path, "seed": SEED, "workdir": workdir, "limits": asdict(self.limits),
                "snippets": [{"index": s.index, "line": s.line, "code": s.code} for s in answer.runnable],
            })
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    frame = recv_frame(sock)
                except TimeoutError:
                    fault = ("timeout", "TimeoutError",
                             f"the answer ran longer than its {self.limits.timeout:g} s limit and was stopped")
                    break
                if frame is None:
                    fault = ("error", "RunnerError", "the runner's fork server stopped unexpectedly")
                    break
                if "pid" in frame:
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
        return self._evidence(answer, results, fault, started)

    def _evidence(self, answer, results: dict, fault, started: float) -> ev.Evidence:
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
            snippets.append({**result, "attrs": sorted(snippet.attrs)})
        return ev.record(answer, snippets, (time.monotonic() - started) * 1000, asdict(self.limits))


def _exit_message(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        return f"the snippet's process was killed by signal {name} (an interpreter crash or a kill)"
    return f"the snippet's process exited with code {os.WEXITSTATUS(status)} before finishing (os._exit or sys.exit in C code)"


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
