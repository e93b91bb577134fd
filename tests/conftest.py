"""Shared helpers: answer files in a temporary answers/ directory, the CLI, an app over small answers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from service import create_app

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


@pytest.fixture
def scratch():
    """A short TMPDIR for a server: the fork server's Unix socket lives in it, and AF_UNIX paths
    are limited to 107 bytes (pytest's tmp_path under xdist is longer). Its path names the
    server's fork servers (their command line holds the socket's path)."""
    folder = Path(tempfile.mkdtemp(prefix="kbt-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def answers_dir(tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    return folder


def run_cli(*args, cwd, timeout=120):
    """`python -m kb …` as a user runs it, with the project importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kb", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_json(folder, *args, cwd):
    """Run `kb check --json` on a folder; return (process, evidence by slug)."""
    proc = run_cli("check", folder, "--json", "--db", Path(cwd) / "kb.sqlite3", *args, cwd=cwd)
    evidence = {e["slug"]: e for e in json.loads(proc.stdout)} if proc.stdout.strip() else {}
    return proc, evidence


@pytest.fixture
def small_app(tmp_path):
    from service_fixtures import write_small_answers

    answers = write_small_answers(tmp_path / "answers")
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True,
                      "KB_RUN_COOLDOWN": 0})  # a re-run right after start-up runs
    yield app
    app.extensions["kb"].close()


@pytest.fixture
def client(small_app):
    return small_app.test_client()
