"""pytest collects answers/*.md: one item per snippet, failures point at the .md line."""
import subprocess
import sys

from helpers import answer_text

# Plugins this suite installs and a learner's pytest lacks: loading them is ~2.7 s of every start.
NOT_A_LEARNERS = ["-p", "no:hypothesispytest", "-p", "no:schemathesis", "-p", "no:anyio"]


def run_pytest(folder, *args):
    """pytest in a folder outside the project: the installed plugin (a pytest11 entry point) collects answers."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(folder), "-p", "no:cacheprovider", *NOT_A_LEARNERS,
         "-rA", "--kb-timeout", "3", *args],
        cwd=folder.parent, capture_output=True, text=True, timeout=120)


def write_answers(folder):
    (folder / "good.md").write_text(answer_text(snippets=[
        "import numpy as np\nz = np.array([0.0])", 'check("sigmoid(0) is 1/2", np.isclose(1 / (1 + np.exp(-z[0])), 0.5), z)']))
    (folder / "wrong.md").write_text(answer_text(snippets=[
        'x = 3\ncheck("three is less than two", x < 2, x)', 'print("later")']))
    (folder / "broken.md").write_text("---\ntitle: t\nsummary: s\nauthor: someone\n---\n")
    (folder / "loops.md").write_text(answer_text(snippets=["while True:\n    pass", "y = 2"]))


def test_each_snippet_is_an_item_and_failures_name_claim_value_and_line(answers_dir):
    write_answers(answers_dir)
    proc = run_pytest(answers_dir)
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "PASSED answers/good.md::snippet-0" in out and "PASSED answers/good.md::snippet-1" in out
    assert "FAILED answers/wrong.md::snippet-0" in out and "PASSED answers/wrong.md::snippet-1" in out
    assert "answers/wrong.md:10: check failed: three is less than two" in out
    assert "computed value: 3" in out
    assert "FAILED answers/broken.md::format" in out
    assert "answers/broken.md:4: unknown key 'author'" in out
    assert "FAILED answers/loops.md::snippet-0" in out and "longer than its 3 s limit" in out
    assert "SKIPPED" in out and "earlier snippet" in out
    assert "3 failed, 3 passed, 1 skipped" in out


def test_runs_under_xdist_one_answer_per_worker(answers_dir):
    write_answers(answers_dir)
    proc = run_pytest(answers_dir, "-n", "2", "--dist", "loadfile")
    assert "3 failed, 3 passed, 1 skipped" in proc.stdout, proc.stdout
    assert "answers/wrong.md:10: check failed: three is less than two" in proc.stdout
