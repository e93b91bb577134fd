"""Helpers shared by the tests (a plain module: `from helpers import …`, never `from conftest`)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def answer_text(title="A question?", summary="An answer.", snippets=(), extra="", prose="Some prose."):
    """An answer file: front matter, prose, then one ```python fence per snippet."""
    parts = [f"---\ntitle: {title}\nsummary: {summary}\n{extra}---\n\n{prose}\n"]
    for code in snippets:
        parts.append(f"\n```python\n{textwrap.dedent(code).strip()}\n```\n")
    return "".join(parts)


def descendants(pid: int) -> dict[int, tuple[int, str]]:
    """{pid: (parent, command line)} of every live (non-zombie) process below `pid`."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = (ppid, commands.get(child, ""))
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has finished)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def settle(condition, within: float = 10.0):
    """Poll until `condition()` is truthy (processes take a moment to be reaped); return its last value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


KB = Path(sys.executable).with_name("kb")  # the installed command (`pip install -e .`)


@dataclass
class Done:
    """What a finished `kb` command left: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd, timeout=None) -> Done:
    """`kb …` run in this process (`kb.cli.main`, what the installed command calls), in `cwd`:
    no interpreter start and no imports per call. `timeout` is accepted for the callers that pass
    it (a run's own limits still apply). Where the process itself matters (the installed script,
    a closed pipe), use `run_process`."""
    from kb.cli import main

    out, err = io.StringIO(), io.StringIO()
    # What the process's logging would print: warnings and worse on stderr, message only (the
    # "last resort" handler's shape; under pytest the root logger has handlers, so add ours).
    log = logging.StreamHandler(err)
    log.setLevel(logging.WARNING)
    logging.getLogger().addHandler(log)
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse: usage errors (2), --help and --version (0)
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(here)
        logging.getLogger().removeHandler(log)
    return Done(code, out.getvalue(), err.getvalue())


def run_process(*args, cwd, timeout=120):
    """`kb …` as a user runs it: the installed command in a process of its own."""
    return subprocess.run([str(KB), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check_json(folder, *args, cwd):
    """Run `kb check --json` on a folder; return (process, evidence by slug)."""
    proc = run_cli("check", folder, "--json", "--db", Path(cwd) / "kb.sqlite3", *args, cwd=cwd)
    evidence = {e["slug"]: e for e in json.loads(proc.stdout)} if proc.stdout.strip() else {}
    return proc, evidence


class SlowClients(threading.Thread):
    """`count` connections that send a request's headers one short line a second and never
    finish; one the server drops (nginx's client_header_timeout) is replaced at once, as a
    slowloris does, so `count` are open throughout."""

    def __init__(self, port: int, count: int, limit: float = float("inf")):
        super().__init__(daemon=True)
        self.port, self.stop, self.limit, self.reopened = port, threading.Event(), limit, 0
        self.sockets = [self._open() for _ in range(count)]

    def _open(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        return sock

    def run(self):
        deadline = time.monotonic() + self.limit  # bounded, whatever happens to the GETs
        n = 0
        while not self.stop.wait(1.0) and time.monotonic() < deadline:
            n += 1
            for i, sock in enumerate(self.sockets):
                try:
                    sock.sendall(b"X-Slow-%d: y\r\n" % n)
                except OSError:
                    sock.close()
                    try:
                        self.sockets[i] = self._open()
                        self.reopened += 1
                    except OSError:  # the server is not accepting right now: try again next second
                        pass
        for sock in self.sockets:
            sock.close()


def copy_database(source: Path, target: Path) -> Path:
    """A consistent copy of an SQLite file, its write-ahead log included (SQLite's backup API)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return target
