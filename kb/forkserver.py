"""The fork server: a single-threaded interpreter with NumPy and matplotlib preloaded.

Started once by `kb.runner.Runner` (`python -m kb.forkserver SOCKET`). For every connection it
forks a child that runs one answer's snippets and streams the results back on that connection;
forking a warm interpreter costs about a millisecond, against ~100 ms for a fresh Python that
imports NumPy. The server itself never runs authored code and never blocks on a client: the
child reads the request. When a child exits, the server reports its exit status on the child's
connection, so the client can tell a crash or `os._exit` from a clean finish.
Runs until its stdin closes (its parent went away).
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

HEADER = struct.Struct("!I")


def send_frame(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> dict | None:
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
    """A text sink that keeps the first `cap` characters and notes that more were dropped."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.size, self.truncated = cap, [], 0, False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.cap - self.size
        if len(text) > room:
            self.truncated = True
            text = text[:max(room, 0)]
        if text:
            self.parts.append(text)
            self.size += len(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts)


def show(value) -> str | None:
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
        inner = ", ".join(show(v) for v in value)
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    else:
        text = repr(value)
    return text if len(text) <= 500 else text[:497] + "..."


def _run_answer(conn: socket.socket) -> None:
    """In the forked child: run the requested snippets, streaming one frame per snippet."""
    import matplotlib.pyplot as plt
    import numpy as np

    request = recv_frame(conn)
    send_frame(conn, {"pid": os.getpid()})
    limits = request["limits"]
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * page
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limits["memory"],) * 2)
    signal.alarm(int(limits["timeout"]) + 5)  # backstop should the client vanish
    os.chdir(request["workdir"])
    np.random.seed(request["seed"])
    random.seed(request["seed"])
    path = request["path"]
    checks: list[dict] = []

    def check(claim, condition, value=None):
        """Record a named piece of evidence; a failing check fails the answer, not the snippet's run."""
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != path:
            frame = frame.f_back
        checks.append({"claim": str(claim), "passed": bool(condition), "value": show(value),
                       "line": frame.f_lineno if frame else None})
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
    send_frame(conn, {"done": True})


def _run_snippet(snippet: dict, namespace: dict, path: str, limits: dict, plt) -> dict:
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
    figures = []
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


def _describe(exc: BaseException, path: str, limits: dict) -> dict:
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


def _alt_text(figure) -> str:
    """A figure's alt text: its label, else its suptitle, else its axes' titles."""
    if figure.get_label():
        return figure.get_label()
    if figure._suptitle is not None and figure._suptitle.get_text():
        return figure._suptitle.get_text()
    return "; ".join(ax.get_title() for ax in figure.axes if ax.get_title())


def serve(socket_path: str) -> None:
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

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(128)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "reap")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)

    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = listener.accept()
                pid = os.fork()
                if pid == 0:
                    _child(conn, listener, selector, children, (wake_r, wake_w))
                children[pid] = conn
            elif key.data == "reap":
                os.read(wake_r, 4096)
                _reap(children)
            elif not sys.stdin.buffer.read1(1):
                return


def _child(conn, listener, selector, children, wake_fds) -> None:
    """Become an isolated worker for one answer; never returns."""
    code = 0
    try:
        os.setsid()  # own process group: the client kills the whole tree on timeout
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        selector.close()
        listener.close()
        for other in children.values():
            other.close()
        for fd in wake_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # output below Python's sys.stdout must not reach the server's pipes
        os.dup2(devnull, 2)
        _run_answer(conn)
    except BaseException:  # noqa: BLE001 - report, never fall back into the server loop
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        try:
            send_frame(conn, {"exit": status})
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
