"""What a forked child does with one request: run one answer's snippets, streaming the results.

The fork server (`kb.run.server`) forks the child, confines it (`kb.run.limits.confine`) and
hands it a connection. Per run the child caps its memory (RLIMIT_AS), sets a backstop alarm,
makes the answers directory read-only where the kernel allows it, seeds the RNGs, and runs the
snippets in one namespace with `check` in it, capturing output (capped), checks, errors and the
figures a snippet leaves open.
"""
from __future__ import annotations

import gc
import io
import json
import os
import random
import resource
import signal
import socket
import sys
import time
import traceback
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from .frames import recv_frame, send_frame
from .limits import WRITES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kb.store.evidence import Error


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


def run_answer(conn: socket.socket) -> None:
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
    private_mounts(request["answers_dir"], request["workdir"])
    os.chdir(request["workdir"])  # after the mounts: the scratch tmpfs, not the directory under it
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
        result = _checked_run(snippet, namespace, checks, path, limits, plt)
        send_frame(conn, {"snippet": result})
        if result["status"] == "error":
            break
    else:
        for number, variant in enumerate(request.get("variants", ())):
            _run_variant(conn, number, variant, namespace, checks, path, limits, plt)
    send_frame(conn, {"done": True})


def _checked_run(snippet: dict[str, Any], namespace: dict[str, Any], checks: list[dict[str, Any]], path: str,
                 limits: dict[str, Any], plt: ModuleType) -> dict[str, Any]:
    """Run one snippet and attach the checks it recorded; a snippet with a failed check failed."""
    checks.clear()
    result = _run_snippet(snippet, namespace, path, limits, plt)
    result["checks"] = list(checks)
    if result["status"] == "passed" and not all(c["passed"] for c in checks):
        result["status"] = "failed"
    return result


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
                result = _checked_run(snippet, namespace, checks, path, limits, plt)
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


def private_mounts(answers: str, workdir: str) -> bool:
    """Where the kernel allows it (root, or the fork server's own user namespace), give the run a
    mount namespace of its own in which the answers directory is read-only, and the scratch
    directory is a tmpfs of `WRITES` bytes that /tmp, /var/tmp, /dev/shm and $TMPDIR share: what
    a run writes there is bounded in total (a write past it fails with "No space left on
    device") and gone with the run. Elsewhere nothing changes (one file is still capped by
    RLIMIT_FSIZE). Mounts made here never reach the service: "/" is made private first, and the
    namespace ends with the run's last process. (Root can remount: this contains accidents.)
    """
    import ctypes

    if os.path.commonpath([answers, workdir]) == answers:  # the scratch directory must stay writable
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    CLONE_NEWNS, MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
        0x20000, 1, 2, 4, 32, 4096, 16384, 1 << 18)
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    target = answers.encode()
    if not (libc.mount(target, target, None, MS_BIND | MS_REC, None) == 0
            and libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) == 0):
        return False
    options = f"size={WRITES},mode=700".encode()
    if libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        return False
    # One tmpfs holds both the scratch directory (`run`) and the temporary places (`tmp`); it is
    # reached through a descriptor because binding over /tmp may hide the path it is mounted on.
    for sub in ("run", "tmp"):
        os.mkdir(os.path.join(workdir, sub), 0o700)
    root = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    kept = os.open(answers, os.O_PATH | os.O_DIRECTORY)
    places = ("/tmp", "/var/tmp", "/dev/shm", os.environ.get("TMPDIR") or "/tmp")
    for place in dict.fromkeys(os.path.realpath(p) for p in places if os.path.isdir(p)):
        libc.mount(f"/proc/self/fd/{root}/tmp".encode(), place.encode(), None, MS_BIND, None)
    # Paths under a bound place are new: make them again there (the answers read-only, as above).
    os.makedirs(workdir, exist_ok=True)
    libc.mount(f"/proc/self/fd/{root}/run".encode(), workdir.encode(), None, MS_BIND, None)
    try:
        hidden = not os.path.samestat(os.stat(kept), os.stat(answers))
    except OSError:  # no such path under a bound place
        hidden = True
    if hidden:
        os.makedirs(answers, exist_ok=True)
        libc.mount(f"/proc/self/fd/{kept}".encode(), target, None, MS_BIND | MS_REC, None)
        libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    os.close(root)
    os.close(kept)
    return True


def warm_up() -> None:
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
