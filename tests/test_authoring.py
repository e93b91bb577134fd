"""Authoring tools through the CLI: `kb new` writes an answer `kb check` accepts; `kb lint`."""
from helpers import answer_text, run_cli


def test_new_writes_a_skeleton_that_check_accepts(tmp_path):
    folder = tmp_path / "answers"
    made = run_cli("new", "Why does Adam's bias correction matter?", "--dir", folder, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    path = folder / "why-does-adams-bias-correction-matter.md"
    assert f"check it with: .venv/bin/python -m kb check {folder}/{path.name}" in made.stdout  # as docs/writing-answers.md writes it
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


def test_lint_flags_the_placeholders_kb_new_leaves(tmp_path):
    folder = tmp_path / "answers"
    assert run_cli("new", "Why is the sky blue?", "--dir", folder, cwd=tmp_path).returncode == 0
    proc = run_cli("lint", folder, "--db", tmp_path / "db", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1
    for what in ("summary", "alias", "tag", "source", "example snippet"):
        assert f"skeleton placeholder left from kb new: replace the {what}" in out, what
    assert "answers/why-is-the-sky-blue.md:3: skeleton placeholder left from kb new: replace the summary" in out


def test_lint_flags_a_summary_longer_than_two_short_sentences(answers_dir, tmp_path):
    wordy = " ".join(["word"] * 41) + "."
    (answers_dir / "wordy.md").write_text(answer_text(summary=wordy, snippets=['check("x", 1 < 2)']))
    (answers_dir / "three.md").write_text(answer_text(summary="One. Two. Three.", snippets=['check("x", 1 < 2)']))
    (answers_dir / "fine.md").write_text(answer_text(  # "=" and "−" in a formula are not words
        summary=" ".join(["word"] * 35) + " a = 1 − b. Two.", snippets=['check("x", 1 < 2)']))
    out = run_cli("lint", answers_dir, "--db", tmp_path / "db", cwd=tmp_path).stdout
    assert "answers/wordy.md:3: summary has 41 words in 1 sentence(s)" in out
    assert "answers/three.md:3: summary has 3 words in 3 sentence(s)" in out
    assert "answers/fine.md:3: summary" not in out


def test_lint_flags_checks_that_cannot_fail(answers_dir, tmp_path):
    code = """
        import numpy as np
        x = np.arange(3.0)
        check("literal", True, 1)
        check("self", x.sum() == x.sum())
        check("self, ordered", x <= x)
        check("self, close", np.allclose(x, x))
        check("or with True", x.sum() > 5 or True)
        check(claim="keyword", condition=(x == x).all())
        check("can fail", x.sum() > 2, x.sum())
        check("can fail too", np.allclose(x, x + 1e-12))
    """
    (answers_dir / "weak.md").write_text(answer_text(snippets=[code]))
    out = run_cli("lint", answers_dir, "--db", tmp_path / "db", cwd=tmp_path).stdout
    flagged = [line for line in out.splitlines() if "check cannot fail" in line]
    assert [line.split(":")[1] for line in flagged] == ["11", "12", "13", "14", "15", "16"], out  # the .md lines
    assert "`x.sum() == x.sum()`" in out


def test_lint_passes_on_the_knowledge_base(real_db):
    from helpers import ROOT

    proc = run_cli("lint", ROOT / "answers", "--db", real_db, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout
