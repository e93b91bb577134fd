"""`kb check`'s report: columns that stay put past [9/N], honest counts when a snippet raises."""
import re

from helpers import answer_text, run_cli


def test_columns_line_up_past_nine_answers_and_one_answer_runs_alone(tmp_path):
    answers = tmp_path / "answers"
    answers.mkdir()
    for n in range(11):
        slug = "a" * (n + 1)  # slugs of every length up to 11
        (answers / f"{slug}.md").write_text(answer_text(snippets=[f'check("{n} is {n}", {n} == {n}, {n})']))
    proc = run_cli("check", answers, "--db", tmp_path / "db", "-j", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checking 11 answers, 2 at a time" in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 11
    for column in ("passed", "1/1 checks"):
        assert len({line.index(column) for line in lines}) == 1, f"'{column}' moves:\n" + "\n".join(lines)
    assert {re.match(r"\[( ?\d+)/11\]", line)[1] for line in lines} >= {" 9", "10"}

    one = run_cli("check", answers / "a.md", "--db", tmp_path / "db", "-j", "4", cwd=tmp_path)
    assert "checking 1 answer\n" in one.stderr and "at a time" not in one.stderr


def test_a_snippet_that_raises_reports_the_checks_it_never_reached(tmp_path):
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "stops.md").write_text(answer_text(snippets=[
        'check("first", True)\nraise RuntimeError("stop")\ncheck("second", True)',
        'for i in range(3):\n    check("in a loop", True, i)\ncheck("last", True)']))
    proc = run_cli("check", answers, "--db", tmp_path / "db", cwd=tmp_path)
    assert proc.returncode == 1
    assert "1/1 checks" in proc.stdout
    assert "(ran 1 of 2 snippets; 1 of 1 check so far holds, 3 not reached)" in proc.stdout
