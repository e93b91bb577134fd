"""Fresh Jupyter kernels forked from a warm process, for tests/test_notebook.py.

Starting `python -m ipykernel_launcher` costs ~0.5 s of CPU before a cell runs, and every
answer then imports NumPy and matplotlib (~0.6 s more): most of a notebook's CPU in the test.
Here one process (`serve`, started by `fork_server`) imports ipykernel, NumPy and matplotlib
once, with the kernel spec's environment, and forks a kernel for each notebook, as the
runner's fork server forks a child for each answer (kb/run/server.py). Each kernel is still a
process of its own, started for one notebook, with a new user namespace: it runs
`ipykernel_launcher`'s own start-up (`IPKernelApp.launch_new_instance`) with the kernel spec's
argv and the environment jupyter_client gives it, in its own session (so the provisioner
signals its process group as it would a kernel it started), its stdin from /dev/null.

What a kernel forked here shares with the warm process is only what importing those modules
did: MPLBACKEND is set to the inline backend before matplotlib is imported (what ipykernel's
`init_gui_pylab` sets before any cell imports it); the inline backend itself is loaded by
the kernel when a cell first draws, as in a kernel started with `python -m`. PYTHONHASHSEED
and the BLAS thread counts come from the kernel spec's env, which the warm process starts with.

`ForkedKernelManager` is the `kernel_manager_class` to give nbclient; its provisioner is
jupyter_client's `LocalProvisioner` with the launch replaced (a pidfd stands in for Popen).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

# The warm process: `python -c SERVER <socket>`, so that its sys.path is a `python -m` kernel's
# (the launcher drops the first entry, '' here, the working directory there).
SERVER = r'''
import json, os, signal, socket, sys

os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # as ipykernel's init_gui_pylab
# Imported only to be loaded before the fork (each kernel then starts without importing them):
# unused here on purpose, hence the noqa.
import numpy  # noqa: F401
import matplotlib.pyplot  # noqa: F401
from ipykernel import kernelapp  # noqa: F401
import ipykernel.ipkernel, ipykernel.zmqshell, IPython.core.interactiveshell  # noqa: F401, E401

path = sys.argv[1]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path + ".tmp")
listener.listen(8)
os.rename(path + ".tmp", path)  # the socket appears once the imports are done and it listens
listener.settimeout(0.5)
children = set()


def stop(*_):
    for pid in children:  # kernels nobody shut down (a test that failed half-way)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:  # its socket and folder (the test process removes them too, if it is still there)
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
parent = os.getppid()
while True:
    if os.getppid() != parent:  # the test process is gone (killed): so is the need for kernels
        stop()
    while children:  # reap the kernels that exited
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if not pid:
            break
        children.discard(pid)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        continue
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                listener.close()
                conn.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                if request["stdout_null"]:
                    os.dup2(null, 1)
                if request["stderr_null"]:
                    os.dup2(null, 2)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                del sys.path[0]  # as ipykernel_launcher does
                sys.argv = ["ipykernel_launcher", *request["args"]]
                kernelapp.launch_new_instance()
                code = 0
            finally:
                try:
                    import atexit
                    atexit._run_exitfuncs()  # as the interpreter of a kernel started with `python -m` would
                except BaseException:
                    pass
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)
        fd = os.pidfd_open(pid)
        socket.send_fds(conn, [json.dumps(pid).encode()], [fd])
        os.close(fd)
'''


@contextmanager
def fork_server(env: dict[str, str]):
    """The warm process, started with `env` added to ours; killed (with any kernel left) on exit.
    Its socket lives in a short folder of its own (AF_UNIX paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="kbk-"))
    path = folder / "kernels.sock"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(path)], env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=folder)
    try:
        deadline = time.monotonic() + 120
        while not path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the kernels' fork server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the kernels' fork server did not start within 120 s")
            time.sleep(0.05)
        ForkedKernelManager.server = str(path)
        yield path
    finally:
        ForkedKernelManager.server = None
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


class _Forked:
    """What LocalProvisioner uses of a Popen, for a kernel the fork server started."""

    stdin = stdout = stderr = None
    returncode: int | None = None

    def __init__(self, pid: int, pidfd: int):
        self.pid, self.pidfd = pid, pidfd

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.pidfd], [], [], 0)[0]:
            self.returncode = 0  # exited (its status is the fork server's to collect)
            os.close(self.pidfd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            self.poll()
        return 0

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkProvisioner(LocalProvisioner):
    """LocalProvisioner, with the kernel forked by the fork server instead of started by Popen."""

    async def launch_kernel(self, cmd, **kwargs):
        server = ForkedKernelManager.server
        assert server is not None, "no fork server: use fork_server() around the notebooks' runs"
        # The spec's argv is [python, -m, ipykernel_launcher, -f, <connection file>, ...].
        assert cmd[1:3] == ["-m", "ipykernel_launcher"], cmd
        request = {"args": cmd[3:], "env": kwargs.get("env") or dict(os.environ),
                   "cwd": str(kwargs.get("cwd") or os.getcwd()),
                   "stdout_null": kwargs.get("stdout") == subprocess.DEVNULL,
                   "stderr_null": kwargs.get("stderr") == subprocess.DEVNULL}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(server)
            sock.sendall(json.dumps(request).encode() + b"\n")
            message, fds, _, _ = socket.recv_fds(sock, 1024, 1)
        assert len(fds) == 1, "the fork server sent no pidfd"
        self.process = _Forked(json.loads(message), fds[0])
        self.pid = self.pgid = self.process.pid  # the kernel leads a session of its own
        self.cwd = request["cwd"]
        return self.connection_info


class ForkedKernelManager(AsyncKernelManager):
    """AsyncKernelManager whose kernels are forked by the fork server (`fork_server`)."""

    server: str | None = None

    async def _async_pre_start_kernel(self, **kw):
        if self.provisioner is None:
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
            self.provisioner = ForkProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
        return await super()._async_pre_start_kernel(**kw)
