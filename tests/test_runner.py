"""The runner, as users meet it through `python -m kb check`: evidence, limits, faults, cache."""
import json
import subprocess
import threading

from helpers import answer_text, check_json, run_cli

from kb.format.answer import load_answers
from kb.run.limits import Limits
from kb.run.runner import Runner

HOSTILE = {
    "endless-loop": ("while True:\n    pass", "timeout", "longer than its 2 s limit"),
    "memory-bomb": ("import numpy as np\nbig = np.ones(10**10)", "error", "MemoryError"),
    "list-bomb": ("big = [0] * (10**10)", "error", "memory cap"),
    "exit-call": ("import os\nos._exit(3)", "error", "exited with code 3"),
    "interpreter-crash": ("import ctypes\nctypes.string_at(0)", "error", "SIGSEGV"),
    "raises": ("x = 1\nraise ValueError('bad value')", "error", "ValueError: bad value"),
}


def test_hostile_snippets_are_contained_and_the_next_answer_runs(answers_dir, tmp_path):
    for slug, (code, _, _) in HOSTILE.items():
        (answers_dir / f"{slug}.md").write_text(answer_text(snippets=[code]))
    (answers_dir / "zz-normal.md").write_text(answer_text(snippets=['check("still runs", 1 + 1 == 2, 1 + 1)']))
    proc, evidence = check_json(answers_dir, "--timeout", "2", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    for slug, (_, status, message) in HOSTILE.items():
        snippet = evidence[slug]["snippets"][0]
        assert evidence[slug]["status"] == status, (slug, snippet)
        assert message in f"{snippet['error']['type']}: {snippet['error']['message']}", (slug, snippet["error"])
    assert evidence["raises"]["snippets"][0]["error"]["line"] == 10, "the line in the .md file"
    assert "answers/memory-bomb.md:10: MemoryError" in proc.stderr
    assert evidence["zz-normal"]["status"] == "passed"


def test_output_flood_is_cut_at_the_cap_and_flagged(answers_dir, tmp_path):
    (answers_dir / "flood.md").write_text(answer_text(snippets=[
        'import sys\nfor _ in range(50_000):\n    print("x" * 1000)\nsys.stderr.write("e" * 10**6)\ncheck("ran to the end", True, 1)']))
    proc, evidence = check_json(answers_dir, cwd=tmp_path)
    snippet = evidence["flood"]["snippets"][0]
    assert snippet["truncated"] is True
    assert len(snippet["stdout"]) == 64 * 1024 and len(snippet["stderr"]) == 64 * 1024
    assert snippet["checks"][0]["passed"], "the snippet runs on after the cap"
    assert "output truncated" in proc.stderr


def test_memory_and_output_limits_are_set_from_the_command_line(answers_dir, tmp_path):
    (answers_dir / "limits.md").write_text(answer_text(snippets=[
        'print("é" * 3000)\ncheck("ran to the end", True)', 'import numpy as np\nbig = np.ones(40 * 2**20 // 8)']))
    proc, evidence = check_json(answers_dir, "--no-cache", "--output-kib", "1", "--memory-mb", "20", cwd=tmp_path)
    printed, allocated = evidence["limits"]["snippets"]
    assert printed["truncated"] and len(printed["stdout"].encode()) <= 1024 and printed["stdout"] == "é" * 512
    assert allocated["error"]["type"] == "MemoryError" and "20 MiB" in allocated["error"]["message"]
    proc, evidence = check_json(answers_dir, "--no-cache", cwd=tmp_path)
    assert evidence["limits"]["status"] == "passed", "the default limits allow both"


def test_child_processes_of_a_snippet_do_not_outlive_it(answers_dir, tmp_path):
    (answers_dir / "kids.md").write_text(answer_text(snippets=[
        'import subprocess\nkids = [subprocess.Popen(["sleep", "4321.5"]) for _ in range(20)]\n'
        'check("twenty children started", len(kids) == 20, len(kids))']))
    proc, evidence = check_json(answers_dir, cwd=tmp_path)
    assert evidence["kids"]["status"] == "passed", proc.stderr
    left = subprocess.run(["pgrep", "-f", "sleep 4321.5"], capture_output=True, text=True).stdout.split()
    assert left == []


def test_snippets_share_a_namespace_run_in_a_scratch_directory_and_are_seeded(answers_dir, tmp_path):
    code = ['import numpy as np\nfrom pathlib import Path\nfirst = np.random.rand()\nPath("scratch.txt").write_text("x")',
            'check("the namespace carries over", first > 0, first)\ncheck("cwd is scratch", Path("scratch.txt").exists())']
    (answers_dir / "one.md").write_text(answer_text(snippets=code))
    (answers_dir / "two.md").write_text(answer_text(snippets=code))
    proc, evidence = check_json(answers_dir, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    values = {slug: e["snippets"][1]["checks"][0]["value"] for slug, e in evidence.items()}
    assert values["one"] == values["two"], "each answer starts from the same RNG seed"
    assert not list(tmp_path.rglob("scratch.txt")), "nothing lands outside the scratch directory"


def test_failing_check_fails_the_answer_with_claim_value_and_line(answers_dir, tmp_path):
    (answers_dir / "wrong.md").write_text(answer_text(snippets=[
        'import numpy as np\nz = np.linspace(-5, 5, 101)\ns = 1 / (1 + np.exp(-z))\n'
        'check("the sigmoid derivative exceeds 1/2 somewhere", (s * (1 - s)).max() > 0.5, (s * (1 - s)).max())\n'
        'print("still running")']))
    proc, evidence = check_json(answers_dir, cwd=tmp_path)
    assert proc.returncode == 1
    snippet = evidence["wrong"]["snippets"][0]
    assert snippet["status"] == "failed" and snippet["stdout"] == "still running\n"
    assert snippet["checks"] == [{"claim": "the sigmoid derivative exceeds 1/2 somewhere", "passed": False,
                                  "value": "0.25", "line": 12}]
    assert "answers/wrong.md:12: check failed: the sigmoid derivative exceeds 1/2 somewhere (value: 0.25)" in proc.stderr


def test_json_evidence_matches_the_contract(answers_dir, tmp_path):
    (answers_dir / "plot.md").write_text(answer_text(snippets=[
        'import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1], [0, 1])\nax.set_title("a line")\n'
        'check("a figure is open", len(plt.get_fignums()) == 1, len(plt.get_fignums()))']))
    proc, evidence = check_json(answers_dir, cwd=tmp_path)
    record = evidence["plot"]
    assert set(record) == {"slug", "status", "ran_at", "duration_ms", "environment", "snippets", "counts"}
    assert set(record["environment"]) == {"python", "numpy"}
    snippet = record["snippets"][0]
    assert {"index", "line", "code", "status", "stdout", "truncated", "duration_ms", "error", "figures",
            "checks"} <= set(snippet)
    assert snippet["figures"] == ["/api/answers/plot/figures/0-0.svg"]
    assert snippet["figure_alts"] == ["a line"]
    assert record["ran_at"].endswith("Z") and record["duration_ms"] > 0


def _status_line(proc, slug):
    return next(line for line in proc.stdout.splitlines() if f" {slug} " in line)


def test_cache_reruns_after_a_code_edit_and_not_after_a_prose_edit(answers_dir, tmp_path):
    path = answers_dir / "memo.md"
    path.write_text(answer_text(snippets=['check("one is positive", 1 > 0, 1)']))
    db = tmp_path / "db"
    first = run_cli("check", answers_dir, "--db", db, cwd=tmp_path)
    assert "cached" not in _status_line(first, "memo")
    again = run_cli("check", answers_dir, "--db", db, cwd=tmp_path)
    assert "cached" in _status_line(again, "memo")

    path.write_text(answer_text(prose="New prose.\n\nAnother paragraph.\n", snippets=['check("one is positive", 1 > 0, 1)']))
    prose_edit = run_cli("check", answers_dir, "--db", db, "--json", cwd=tmp_path)
    assert "cached" in prose_edit.stderr
    [record] = json.loads(prose_edit.stdout)
    assert record["snippets"][0]["checks"][0]["line"] == 12, "cached lines follow the edited prose"

    path.write_text(answer_text(snippets=['check("one is positive", 1 > 0, 1.0)']))
    code_edit = run_cli("check", answers_dir, "--db", db, cwd=tmp_path)
    assert "cached" not in _status_line(code_edit, "memo")
    forced = run_cli("check", answers_dir, "--db", db, "--no-cache", cwd=tmp_path)
    assert "cached" not in _status_line(forced, "memo")


def test_evidence_cut_short_by_a_limit_runs_again_once_the_limit_is_raised(answers_dir, tmp_path):
    (answers_dir / "slow.md").write_text(answer_text(snippets=['import time\ntime.sleep(1.5)\ncheck("woke", True)']))
    db = tmp_path / "db"
    first = run_cli("check", answers_dir, "--db", db, "--timeout", "1", cwd=tmp_path)
    assert first.returncode == 1 and "timeout" in _status_line(first, "slow")
    same = run_cli("check", answers_dir, "--db", db, "--timeout", "1", cwd=tmp_path)
    assert "cached" in _status_line(same, "slow"), "the same limit: the timeout stands"
    raised = run_cli("check", answers_dir, "--db", db, "--timeout", "5", cwd=tmp_path)
    assert raised.returncode == 0 and "cached" not in _status_line(raised, "slow")
    assert "passed" in _status_line(raised, "slow")
    lowered = run_cli("check", answers_dir, "--db", db, "--timeout", "1", cwd=tmp_path)
    assert "cached" in _status_line(lowered, "slow"), "passed evidence is not cut short by a lower limit"
    proc, evidence = check_json(answers_dir, cwd=tmp_path)
    assert "limits" not in evidence["slow"] and "key" not in evidence["slow"], "internal fields stay inside"


def test_runner_is_safe_to_call_from_many_threads(answers_dir):
    for n in range(6):
        (answers_dir / f"a{n}.md").write_text(answer_text(snippets=[f'value = {n} * 2\ncheck("doubles", value == {2 * n}, value)']))
    answers, _ = load_answers([answers_dir])
    results = {}
    with Runner(Limits(timeout=20)) as runner:
        threads = [threading.Thread(target=lambda a=a: results.__setitem__(a.slug, runner.run(a)))
                   for a in answers.values() for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 6
    for n in range(6):
        assert results[f"a{n}"]["status"] == "passed"
        assert results[f"a{n}"]["snippets"][0]["checks"][0]["value"] == str(2 * n)


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("check", tmp_path / "nowhere.md", cwd=tmp_path).returncode == 2
    for option, value in (("--timeout", "0"), ("--timeout", "-1"), ("--memory-mb", "0"), ("-j", "0"), ("--timeout", "soon")):
        proc = run_cli("check", tmp_path, option, value, cwd=tmp_path)
        assert proc.returncode == 2 and option in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert run_cli("frobnicate", cwd=tmp_path).returncode == 2
