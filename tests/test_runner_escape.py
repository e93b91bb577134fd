"""A runner nothing escapes: hostile snippets against the fork server's subreaper, the child's
resource limits, its allow-listed environment and the clean-up of runner directories.

(`tests/test_runner.py` covers timeouts, memory, output and crashes; this file what issue 10
found escaping: `setsid` daemons, unbounded files and descriptors, the service's environment,
directories left behind by SIGTERM and `kill -9`.)
"""
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import answer_text, check_json, settle

from kb.format.answer import load_answers
from kb.run.limits import FILE_SIZE, OPEN_FILES, PROCESSES, WRITES, Limits
from kb.run.runner import Runner

DAEMONS = '''import os, subprocess
# A daemon in a session of its own, started the ordinary way...
subprocess.Popen(["setsid", "sleep", "4242.5"], start_new_session=True)
# ...and the classic double fork: the grandchild leaves the group, its parent exits at once.
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "4242.6"])
    os._exit(0)
os.waitpid(pid, 0)
check("both daemons were started", True)'''


def sleepers(marker="4242."):
    return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()


def run_one(answers_dir, code, limits=None):
    (answers_dir / "hostile.md").write_text(answer_text(snippets=[code]))
    answers, _ = load_answers([answers_dir])
    with Runner(limits or Limits(timeout=20)) as runner:
        return runner.run(answers["hostile"])


def test_setsid_and_double_forked_daemons_are_killed_after_the_run(answers_dir):
    assert not sleepers(), "no leftovers from an earlier run"
    (answers_dir / "hostile.md").write_text(answer_text(snippets=[DAEMONS]))
    answers, _ = load_answers([answers_dir])
    with Runner(Limits(timeout=20)) as runner:
        evidence = runner.run(answers["hostile"])
        assert evidence["status"] == "passed", evidence["snippets"][0]
        # The runner (and its fork server) are still up: the daemons went when the run ended.
        assert settle(lambda: not sleepers()), f"daemons outlived their run: {sleepers()}"
        again = runner.run(answers["hostile"])
        assert again["status"] == "passed" and settle(lambda: not sleepers()), "and after every run"


def test_daemons_are_gone_when_kb_check_ends(answers_dir, tmp_path):
    (answers_dir / "hostile.md").write_text(answer_text(snippets=[DAEMONS]))
    proc, evidence = check_json(answers_dir, "--no-cache", cwd=tmp_path)
    assert evidence["hostile"]["status"] == "passed", proc.stderr
    assert settle(lambda: not sleepers()), sleepers()


def test_the_service_environment_is_not_visible_to_a_snippet(answers_dir, monkeypatch):
    secret = "kb-secret-value-7f3a"
    monkeypatch.setenv("KB_SECRET_TEST", secret)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    code = '''import os
print(os.environ.get("KB_SECRET_TEST"))
print(open("/proc/self/environ", "rb").read())
print(open(f"/proc/{os.getppid()}/environ", "rb").read())  # the fork server's
check("PATH is still there", "PATH" in os.environ, os.environ.get("PATH"))
check("the locale is passed on", os.environ.get("LC_ALL") == "C.UTF-8", os.environ.get("LC_ALL"))'''
    evidence = run_one(answers_dir, code)
    snippet = evidence["snippets"][0]
    assert evidence["status"] == "passed", snippet
    assert snippet["stdout"].startswith("None\n")
    assert secret not in snippet["stdout"] and "KB_SECRET_TEST" not in snippet["stdout"]


def test_a_big_write_stops_at_the_file_size_limit(answers_dir):
    code = f'''import os
with open("big.bin", "wb") as out:
    try:
        for _ in range({FILE_SIZE >> 20} + 8):
            out.write(bytes(1 << 20))
            out.flush()
    finally:
        print(os.path.getsize("big.bin"))'''
    evidence = run_one(answers_dir, code)
    snippet = evidence["snippets"][0]
    assert snippet["status"] == "error" and snippet["error"]["type"] == "OSError", snippet
    assert "File too large" in snippet["error"]["message"]
    assert int(snippet["stdout"]) <= FILE_SIZE


def test_what_a_run_writes_is_bounded_in_total_and_gone_with_the_run(answers_dir):
    """Files of 10 MiB each, under the one-file limit, to the scratch directory and /tmp alike:
    together they stop at WRITES, and none is left once the run is over."""
    if os.geteuid() != 0:
        pytest.skip("the run's own tmpfs needs root (or the fork server's user namespace, not tested here)")
    marker = f"kb-writes-{os.getpid()}"
    code = f'''import os
written = 0
try:
    for i in range({WRITES >> 20} // 10 + 8):
        folder = "/tmp" if i % 2 else "."
        with open(os.path.join(folder, f"{marker}-{{i}}.bin"), "wb") as out:
            out.write(bytes(10 << 20))
        written += 10 << 20
finally:
    print(written)'''
    evidence = run_one(answers_dir, code)
    snippet = evidence["snippets"][0]
    assert snippet["status"] == "error" and "No space left on device" in snippet["error"]["message"], snippet
    assert 0 < int(snippet["stdout"]) <= WRITES
    assert not [name for name in os.listdir("/tmp") if name.startswith(marker)], "a run's /tmp files outlived it"


def test_open_files_are_limited_and_no_core_is_dumped(answers_dir):
    code = f'''import os, resource
check("no core dumps", resource.getrlimit(resource.RLIMIT_CORE) == (0, 0), resource.getrlimit(resource.RLIMIT_CORE))
files = []
while len(files) < {OPEN_FILES} + 100:
    files.append(open(os.devnull))'''
    evidence = run_one(answers_dir, code)
    snippet = evidence["snippets"][0]
    assert snippet["checks"][0]["passed"], snippet["checks"]
    assert snippet["error"]["type"] == "OSError" and "Too many open files" in snippet["error"]["message"], snippet


def _unprivileged():
    """A user to run `kb check` as, where root can switch to one: `nobody`, given only the
    capability to read and search files (CAP_DAC_READ_SEARCH), so that it can run this Python
    where it lives under root's private home; not root, and no other privilege."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    probe = subprocess.run([*_as(nobody), sys.executable, "-c",  # as the runner does: this Python starting itself
                            "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import numpy, kb'], check=True)"],
                           env={"PATH": os.environ["PATH"]}, capture_output=True, cwd="/")
    return nobody if probe.returncode == 0 else None


def _as(user):
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


def _check_as_unprivileged(tmp_path, code):
    """`kb check` of one answer holding `code`, as an unprivileged user (or as the user running
    the tests, when that is not root); its evidence."""
    user = None if os.geteuid() != 0 else _unprivileged()
    if os.geteuid() == 0 and user is None:
        pytest.skip("running as root and cannot switch to an unprivileged user that can read the project")
    work = Path(tmp_path)
    (work / "answers").mkdir()
    (work / "answers" / "probe.md").write_text(answer_text(snippets=[code]))
    command = [sys.executable, "-m", "kb", "check", str(work / "answers"), "--json", "--no-cache",
               "--db", str(work / "kb.sqlite3")]
    if user is not None:
        os.chown(work, user.pw_uid, user.pw_gid)
        for path in work.rglob("*"):
            os.chown(path, user.pw_uid, user.pw_gid)
        command = [*_as(user), *command]
    # No PID namespace: the capability that lets `nobody` read root's Python does not carry into
    # the user namespace the fork server would create (there, the interpreter is unreadable).
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "TMPDIR": str(work), "KB_PID_NAMESPACE": "off"}
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)[0]


def test_processes_are_limited_for_an_unprivileged_user(tmp_path):
    """RLIMIT_NPROC binds users other than root (the kernel exempts root, see docs/runner.md)."""
    evidence = _check_as_unprivileged(tmp_path, f'''import subprocess
kids = []
try:
    while len(kids) < {PROCESSES} * 4:
        kids.append(subprocess.Popen(["sleep", "4243.5"]))
except BlockingIOError:
    pass
print(len(kids))''')
    started = int(evidence["snippets"][0]["stdout"])
    assert started <= PROCESSES, f"{started} processes started"
    assert settle(lambda: not sleepers("4243.5"))


def _kb_check_in_background(answers_dir, cwd, scratch):
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.Popen([sys.executable, "-m", "kb", "check", str(answers_dir), "--no-cache",
                             "--db", str(cwd / "kb.sqlite3")], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


WRITES_THEN_WAITS = '''from pathlib import Path
import time
Path("partial.bin").write_bytes(bytes(10**6))
time.sleep(600)'''


def _written(scratch):
    """The snippet's partial file, seen through its process's working directory: the scratch
    directory is the run's own tmpfs where the kernel allows it, invisible from outside."""
    found = list(scratch.glob("kb-slow-*/partial.bin"))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(os.readlink(f"/proc/{pid}/cwd")).name.startswith("kb-slow-"):
                found += [p for p in [Path(f"/proc/{pid}/cwd/partial.bin")] if p.exists()]
        except OSError:
            pass
    return found


def test_sigterm_removes_runner_and_scratch_directories(answers_dir, tmp_path, scratch):
    (answers_dir / "slow.md").write_text(answer_text(snippets=[WRITES_THEN_WAITS]))
    check = _kb_check_in_background(answers_dir, tmp_path, scratch)
    try:
        assert settle(lambda: _written(scratch), within=60), "the snippet started writing"
        check.send_signal(signal.SIGTERM)
        assert check.wait(30) == -signal.SIGTERM
    finally:
        if check.poll() is None:
            check.kill()
    assert settle(lambda: not any(scratch.iterdir())), list(scratch.iterdir())


def test_a_new_runner_sweeps_what_a_killed_one_left(answers_dir, tmp_path, scratch):
    (answers_dir / "slow.md").write_text(answer_text(snippets=[WRITES_THEN_WAITS]))
    check = _kb_check_in_background(answers_dir, tmp_path, scratch)
    try:
        assert settle(lambda: _written(scratch), within=60)
        check.kill()
        check.wait(30)
    finally:
        if check.poll() is None:
            check.kill()
    left = sorted(p.name for p in scratch.iterdir())
    assert any(n.startswith("kb-forkserver-") for n in left) and any(n.startswith("kb-slow-") for n in left), left

    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "quick.md").write_text(answer_text(snippets=['check("runs", True)']))
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, "-m", "kb", "check", str(quick), "--db", str(tmp_path / "kb.sqlite3")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(scratch.iterdir()) == [], "the killed runner's directory and its run's scratch are gone"


def test_a_live_runners_directory_is_not_swept(answers_dir, scratch, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    (answers_dir / "quick.md").write_text(answer_text(snippets=['check("runs", True)']))
    answers, _ = load_answers([answers_dir])
    with Runner(Limits(timeout=20)) as first:
        assert first.run(answers["quick"])["status"] == "passed"
        with Runner(Limits(timeout=20)) as second:  # sweeps at start
            assert second.run(answers["quick"])["status"] == "passed"
            assert first.run(answers["quick"])["status"] == "passed", "the first runner still works"
            assert len(list(scratch.glob("kb-forkserver-*"))) == 2
    assert list(scratch.iterdir()) == []


def _can_unshare_mounts() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x20000) != 0)"])
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_mounts(), reason="no mount namespaces here (needs root or CAP_SYS_ADMIN)")
def test_the_answers_directory_is_read_only_to_a_snippet(answers_dir):
    code = f'''from pathlib import Path
Path("scratch.txt").write_text("the scratch directory is writable")
check("scratch is writable", Path("scratch.txt").exists())
Path({str(answers_dir)!r}, "hostile.md").write_text("overwritten")'''
    evidence = run_one(answers_dir, code)
    snippet = evidence["snippets"][0]
    assert snippet["checks"][0]["passed"], snippet
    assert snippet["error"]["type"] == "OSError" and "Read-only file system" in snippet["error"]["message"], snippet
    assert (answers_dir / "hostile.md").read_text().startswith("---"), "the answer is intact"
    probe = Path(answers_dir, "written-by-the-test.txt")
    probe.write_text("the service's own view is unchanged")
    assert probe.exists()
