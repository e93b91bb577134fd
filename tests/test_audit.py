"""`kb audit`: a check is killed when a small breakage of what it depends on makes it fail,
survives when none does; identities are listed; results are cached; mutants never touch a
check; lines map back across snippets; and the audit is honest (a breakage that is not one
of its own mutants, applied from outside, makes a killed check fail too)."""
from __future__ import annotations

import ast
import json
import re
import shutil

import pytest
from helpers import ROOT, answer_text, copy_database, run_cli

from kb.format.answer import load_answers, parse_answer
from kb.mutants import analyse, mutate

AVERAGE = """
import numpy as np
m = 4
X = np.arange(12.0).reshape(3, 4)
dW = X.sum(axis=1, keepdims=True)
dW = dW / m
check("dW is the average of the examples' gradients", np.allclose(dW[:, 0], [1.5, 5.5, 9.5]), dW.ravel())
"""
TAUTOLOGIES = """
import numpy as np
x = 2.0
check("x is positive", x > 0, x)
rng = np.random.default_rng(0)
z = rng.standard_normal(10_000)
check("NumPy's normal sampler has mean near 0", abs(z.mean()) < 0.05, z.mean())
check("the square root of 4 is 2", np.isclose(np.sqrt(4.0), 2.0))
"""
IDENTITY = """
import numpy as np
t = np.linspace(0, 3, 7)
check("sin² + cos² = 1", np.allclose(np.sin(t) ** 2 + np.cos(t) ** 2, 1), identity="Pythagoras, shown on purpose")
"""


def audit(tmp_path, *paths, extra=()):
    proc = run_cli("audit", *paths, "--db", tmp_path / "kb.sqlite3", "-j", "2", "--json", *extra, cwd=tmp_path, timeout=300)
    data = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc, data


def write(tmp_path, slug, *snippets, prose="Some prose."):
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    path = folder / f"{slug}.md"
    path.write_text(answer_text(snippets=snippets, prose=prose))
    return path


def checks_of(data):
    return {c["line"]: c for r in data["answers"] for c in r["checks"]}


def test_a_check_that_can_fail_is_killed_and_says_by_what(tmp_path):
    path = write(tmp_path, "average", AVERAGE)
    proc, data = audit(tmp_path, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (check,) = checks_of(data).values()
    assert check["status"] == "killed"
    assert check["mutation"]["description"]
    assert data["totals"] == {"checks": 1, "killed": 1, "identity": 0, "survived": 0, "failing": 0, "unreached": 0}
    text = run_cli("audit", path, "--db", tmp_path / "kb.sqlite3", cwd=tmp_path).stdout
    assert re.search(r"answers/average\.md:\d+: killed .*\n\s+fails if `.+` → `.+` \(answers/average\.md:\d+\)", text), text
    quiet = run_cli("audit", path, "--db", tmp_path / "kb.sqlite3", "--quiet", cwd=tmp_path).stdout
    assert "average: 1 of 1 check shown able to fail" in quiet and "fails if" not in quiet, quiet


def test_checks_that_cannot_fail_survive_and_fail_the_run(tmp_path):
    path = write(tmp_path, "tautologies", TAUTOLOGIES)
    proc, data = audit(tmp_path, path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    statuses = [c["status"] for c in checks_of(data).values()]
    assert statuses == ["survived"] * 3
    assert "SURVIVED at answers/tautologies.md:" in proc.stderr  # the report goes to stderr with --json
    assert "nothing it depends on can be broken" in proc.stderr  # the sqrt(4) check


def test_a_wrong_claim_fails_the_audit_at_its_line(tmp_path):
    """`make test` runs the audit, not pytest over answers/: a wrong claim must fail it there."""
    wrong = write(tmp_path, "wrong", AVERAGE.replace("dW / m", "dW / (m - 1)"))
    crash = write(tmp_path, "crash", AVERAGE + "raise RuntimeError('after the last check')\n")
    proc, data = audit(tmp_path, wrong, crash)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = answer_text(snippets=(AVERAGE,), prose="Some prose.").splitlines().index(
        "check(\"dW is the average of the examples' gradients\", np.allclose(dW[:, 0], [1.5, 5.5, 9.5]), dW.ravel())") + 1
    assert f"answers/wrong.md:{line}: failing   dW is the average" in proc.stderr, proc.stderr
    assert "answers/crash.md: its own run ends error" in proc.stderr, proc.stderr
    assert data["totals"]["failing"] == 1


def test_an_identity_is_listed_never_mutated_and_does_not_fail_the_run(tmp_path):
    path = write(tmp_path, "identity", IDENTITY)
    proc, data = audit(tmp_path, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (check,) = checks_of(data).values()
    assert check["status"] == "identity" and check["identity"] == "Pythagoras, shown on purpose"
    assert check["tried"] == 0 and data["mutants_run"] == 0
    assert "identity" in proc.stderr and "Pythagoras" in proc.stderr
    evidence = json.loads(run_cli("check", path, "--db", tmp_path / "kb.sqlite3", "--json", cwd=tmp_path).stdout)
    assert evidence[0]["snippets"][0]["checks"][0]["identity"] == "Pythagoras, shown on purpose"


def test_an_unchanged_answer_is_not_audited_again_and_prose_edits_keep_the_audit(tmp_path):
    path = write(tmp_path, "average", AVERAGE)
    first, data = audit(tmp_path, path)
    assert data["mutants_run"] > 0
    path.write_text(path.read_text().replace("Some prose.", "Some prose.\n\nTwo more\nlines of prose."))
    second, again = audit(tmp_path, path)
    assert again["mutants_run"] == 0 and "(cached)" in second.stderr
    (before,), (after,) = checks_of(data).values(), checks_of(again).values()
    assert after["line"] == before["line"] + 3 and after["mutation"]["line"] == before["mutation"]["line"] + 3
    assert after["status"] == "killed"
    third, fresh = audit(tmp_path, path, extra=["--no-cache"])
    assert fresh["mutants_run"] > 0


def test_lines_map_back_across_snippets(tmp_path):
    path = write(tmp_path, "two", """
        import numpy as np

        def average(X):
            total = X.sum(axis=1)
            return total / X.shape[1]
        """, """
        X = np.arange(12.0).reshape(3, 4)
        check("the average of each row", np.allclose(average(X), [1.5, 5.5, 9.5]), average(X))
        """, prose="Prose\nover\nseveral\nlines.")
    proc, data = audit(tmp_path, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = path.read_text().split("\n")
    (check,) = checks_of(data).values()
    assert lines[check["line"] - 1].startswith('check("the average of each row"')
    mutated = lines[check["mutation"]["line"] - 1]
    assert mutated.strip() in ("total = X.sum(axis=1)", "return total / X.shape[1]",
                               "X = np.arange(12.0).reshape(3, 4)"), check["mutation"]


def _statement_chunks(code):
    """The snippet cut at line starts into runs of whole top-level statements (a statement's
    decorators and the comments above it with it; statements sharing a line together), as
    character offsets: each run parses alone, and the snippet parses if and only if each does."""
    lines = code.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    runs: list[list[int]] = []  # [first line, last line], 1-based
    for node in ast.parse(code).body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], node.end_lineno)
        else:
            runs.append([runs[-1][1] + 1 if runs else 1, node.end_lineno])
    runs[-1][1] = len(lines)  # the comments and blank lines after the last statement
    return [(starts[a - 1], starts[b] - 1) for a, b in runs]


def _check_spans(code):
    tree = ast.parse(code)
    lines = code.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)

    def offset(line, col):
        return starts[line - 1] + len(lines[line - 1].encode()[:col].decode())
    return [(offset(n.lineno, n.col_offset), offset(n.end_lineno, n.end_col_offset)) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "check"]


def test_mutants_never_touch_a_check_and_never_move_a_line():
    answers, _ = load_answers([ROOT / "answers"])
    seen = 0
    for answer in answers.values():
        analysis = analyse(answer)
        codes = {s.index: s.code for s in answer.snippets}
        # The check calls of each mutated snippet as written, parsed once (not once per mutant).
        spans = {index: _check_spans(codes[index]) for index in {m.snippet for m in analysis.mutants}}
        chunks = {index: _statement_chunks(codes[index]) for index in spans}
        for mutant in analysis.mutants:
            code = codes[mutant.snippet]
            for start, end in spans[mutant.snippet]:
                assert mutant.end <= start or mutant.start >= end, (answer.slug, mutant)
            assert mutant.replacement.count("\n") == code[mutant.start:mutant.end].count("\n"), (answer.slug, mutant)
            # It parses: the lines of the statements it edits, edited, parse (the rest is unchanged).
            first, last = next(c for c in chunks[mutant.snippet] if c[0] <= mutant.start < c[1])
            assert mutant.end <= last, (answer.slug, mutant)
            ast.parse(code[first:mutant.start] + mutant.replacement + code[mutant.end:last])
            seen += 1
        for site in analysis.sites:
            for mutant_id in site.candidates:
                assert analysis.mutants[mutant_id].snippet <= site.snippet
    assert seen > 1000
    again = analyse(answers["gradient-clipping"])  # reproducible: the same mutants in the same order
    first = analyse(answers["gradient-clipping"])
    assert [m.description for m in again.mutants] == [m.description for m in first.mutants]
    assert [s.candidates for s in again.sites] == [s.candidates for s in first.sites]


def test_a_mutant_keeps_every_check_line_of_the_original():
    answer = parse_answer(ROOT / "answers" / "gradient-clipping.md")
    analysis = analyse(answer)
    for mutant in analysis.mutants[:20]:
        changed = mutate(answer, mutant)
        for before, after in zip(answer.snippets, changed.snippets, strict=True):
            assert before.line == after.line
            assert [n.lineno for n in ast.walk(ast.parse(before.code)) if isinstance(n, ast.Call)
                    and getattr(n.func, "id", None) == "check"] == \
                   [n.lineno for n in ast.walk(ast.parse(after.code)) if isinstance(n, ast.Call)
                    and getattr(n.func, "id", None) == "check"]


def _perturb(code: str, line: int) -> str | None:
    """An outside breakage that is none of the audit's operators: the value assigned on `line`
    (or returned there) shifted: `x = e` becomes `x = (e) + 0.1` (the audit never adds a term)."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.Return)) and node.value is not None and node.lineno <= line <= node.end_lineno \
                and node.value.lineno == node.value.end_lineno:
            lines = code.split("\n")
            text = lines[node.value.lineno - 1]
            raw = text.encode()
            start, end = node.value.col_offset, node.value.end_col_offset
            lines[node.value.lineno - 1] = (raw[:start] + b"(" + raw[start:end] + b") + 0.1" + raw[end:]).decode()
            return "\n".join(lines)
    return None


@pytest.mark.parametrize("slug", ["gradient-clipping", "inverted-dropout"])
def test_the_audit_is_honest_outside_breakages_make_killed_checks_fail(tmp_path, slug, real_evidence):
    """For each killed check: replay the kill from outside (edit the .md text as a person would,
    parse and run it as `kb check` does) and it fails; and shift the value computed where the
    kill was (x → x + 0.1, none of the audit's operators): most killed checks fail under that too.

    The audit's claims are the ones `make test`'s `kb audit` stored, where the session's database
    has them (an audit is keyed by the answer's code and `AUDIT_VERSION`); else it audits here."""
    from kb.run.runner import Runner

    folder = tmp_path / "answers"
    shutil.copytree(ROOT / "answers", folder)  # its `related` answers must be there
    copy_database(real_evidence, tmp_path / "kb.sqlite3")
    path = folder / f"{slug}.md"
    proc, data = audit(tmp_path, path)
    assert data is not None, proc.stderr
    killed = [c for c in checks_of(data).values() if c["status"] == "killed"]
    assert killed
    text = path.read_text()
    lines = text.split("\n")
    answer = parse_answer(path)
    found = {(answer.snippets[m.snippet].line + m.line, m.description): m for m in analyse(answer).mutants}

    def outcome(snippet, code):
        """{check line: passed} of the answer with `snippet`'s code replaced, run from its text."""
        count = snippet.code.count("\n") + 1
        edited = "\n".join(lines[:snippet.line] + code.split("\n") + lines[snippet.line + count:])
        evidence = runner.run(parse_answer(path, edited))
        return {c["line"]: c["passed"] for s in evidence["snippets"] for c in s["checks"]}

    nudged = nudged_failed = 0
    with Runner() as runner:
        for check in killed:
            mutant = found[(check["mutation"]["line"], check["mutation"]["description"])]
            snippet = answer.snippets[mutant.snippet]
            replayed = outcome(snippet, snippet.code[:mutant.start] + mutant.replacement + snippet.code[mutant.end:])
            assert replayed.get(check["line"]) is False, check
            perturbed = _perturb(snippet.code, mutant.line)
            if perturbed is not None:
                result = outcome(snippet, perturbed).get(check["line"])
                if result is not None:
                    nudged += 1
                    nudged_failed += not result
    assert nudged == 0 or nudged_failed / nudged >= 0.5, (nudged_failed, nudged)


def test_the_page_and_the_api_show_the_audit_and_nothing_before_it(tmp_path):
    from jsonschema import Draft202012Validator

    from service import create_app
    from service.openapi import spec

    write(tmp_path, "average", AVERAGE)
    write(tmp_path, "identity", IDENTITY)
    write(tmp_path, "tautologies", TAUTOLOGIES)
    db = tmp_path / "kb.sqlite3"
    app = create_app({"KB_ANSWERS": str(tmp_path / "answers"), "KB_DB": str(db), "TESTING": True})
    document = spec()

    def conforms(payload, name):
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        assert not [e.message for e in Draft202012Validator(schema).iter_errors(payload)]

    try:
        client = app.test_client()
        before = client.get("/api/answers/average/evidence").get_json()
        assert "audit" not in before and all("audit" not in c for s in before["snippets"] for c in s["checks"])
        assert "shown able to fail" not in client.get("/answers/average").get_data(as_text=True)
        proc = run_cli("audit", tmp_path / "answers", "--db", db, "-j", "2", cwd=tmp_path, timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # the tautologies survive
        evidence = client.get("/api/answers/average/evidence").get_json()
        conforms(evidence, "Evidence")
        assert evidence["audit"]["summary"] == "1 of 1 check shown able to fail"
        (check,) = evidence["snippets"][0]["checks"]
        assert check["audit"]["status"] == "killed" and check["audit"]["mutation"] and check["audit"]["line"]
        conforms(client.get("/api/answers/average").get_json(), "Answer")
        page = client.get("/answers/average").get_data(as_text=True)
        assert "1 of 1 check shown able to fail" in page and "fails if <code>" in page
        identity = client.get("/answers/identity").get_data(as_text=True)
        assert "an identity, shown on purpose: Pythagoras, shown on purpose" in identity
        assert "0 of 1 check shown able to fail, 1 marked as an identity" in identity
        conforms(client.get("/api/answers/identity/evidence").get_json(), "Evidence")
        survivors = client.get("/answers/tautologies").get_data(as_text=True)
        assert "0 of 3 checks shown able to fail" in survivors and "not shown able to fail" in survivors
    finally:
        app.extensions["kb"].close()


def test_a_mutant_that_loops_forever_is_stopped_and_does_not_count(tmp_path):
    path = write(tmp_path, "halving", """
        import numpy as np
        steps = 0
        x = 10.0
        while x > 1:
            x = x / 2
            steps += 1
        """, """
        check("halving 10 gets it below 1 in 4 steps", steps == 4 and 0.5 < x <= 1, (steps, x))
        """)
    proc, data = audit(tmp_path, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (check,) = checks_of(data).values()
    assert check["status"] == "killed"
    assert data["seconds"] < 60
