"""Authoring tools through the CLI: `kb new` writes an answer `kb check` accepts; `kb lint`."""
from helpers import answer_text, run_cli


def test_new_writes_a_skeleton_that_check_accepts(tmp_path):
    folder = tmp_path / "answers"
    made = run_cli("new", "Why does Adam's bias correction matter?", "--dir", folder, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    path = folder / "why-does-adams-bias-correction-matter.md"
    assert path.exists() and "title: \"Why does Adam's bias correction matter?\"" in path.read_text()
    checked = run_cli("check", path, "--db", tmp_path / "db", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1/1 checks" in checked.stdout
    again = run_cli("new", "Why does Adam's bias correction matter?", "--dir", folder, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert run_cli("new", "???", "--dir", folder, cwd=tmp_path).returncode == 2


def test_check_accepts_a_single_file_or_a_directory(answers_dir, tmp_path):
    (answers_dir / "one.md").write_text(answer_text(snippets=['check("one", True, 1)']))
    (answers_dir / "two.md").write_text(answer_text(snippets=['check("two", True, 2)']))
    single = run_cli("check", answers_dir / "one.md", "--db", tmp_path / "db", cwd=tmp_path)
    assert " one " in single.stdout and " two " not in single.stdout
    both = run_cli("check", answers_dir, "--db", tmp_path / "db", cwd=tmp_path)
    assert " one " in both.stdout and " two " in both.stdout


def test_lint_reports_what_readers_would_trip_over(answers_dir, tmp_path):
    figure = 'import matplotlib.pyplot as plt\nplt.plot([0, 1])\ncheck("a line", True)'
    (answers_dir / "alpha.md").write_text(answer_text(
        title="Alpha?", extra="aliases: [shared phrasing]\nrelated: [beta]\n", snippets=[figure]))
    (answers_dir / "beta.md").write_text(answer_text(
        title="Beta?", extra="aliases: [Shared  phrasing!]\n", snippets=["x = 1"]))
    (answers_dir / "gamma.md").write_text(answer_text(title="Gamma?", extra="related: [alpha]\n",
                                                      snippets=['check("fine", True)']))
    proc = run_cli("lint", answers_dir, "--db", tmp_path / "db", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1
    assert "answers/alpha.md:10: figure 0-0.svg has no alt text" in out
    assert "answers/alpha.md:5: related link to 'beta' is one-way" in out
    assert "answers/beta.md:5: no check(...)" in out or "answers/beta.md:6: no check(...)" in out
    assert "answers/alpha.md:4: alias 'shared phrasing' is also used by beta" in out
    assert "answers/gamma.md" in out and "no other answer links here" in out
    assert "answers/gamma.md:1: no topic: add 'topic:' with one of neural-network-basics" in out


def test_lint_passes_on_the_knowledge_base(real_db):
    from helpers import ROOT

    proc = run_cli("lint", ROOT / "answers", "--db", real_db, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout
