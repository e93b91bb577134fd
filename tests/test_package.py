"""The package as users install and run it: the layer rule at run time, the `kb` entry point.

The import rule itself (layers within `kb`; `kb` never imports Flask or `service`) is checked on
the source by import-linter (`lint-imports`, contracts in pyproject.toml). These tests check what
that cannot see: the modules an import actually loads, whatever a dependency pulls in.
"""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import KB, ROOT, answer_text

WEB = ("flask", "werkzeug", "jinja2", "service")


def loaded_modules(code: str) -> list[str]:
    """The top-level names in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_core_library_loads_no_web_framework():
    loaded = loaded_modules("import kb.cli, kb.library, kb.pytest_plugin, kb.authoring")
    assert "kb" in loaded
    assert [name for name in loaded if name in WEB] == []


def test_kb_check_loads_no_web_framework(tmp_path):
    """The installed `kb` is kb.cli:main; `build` comes from the service by entry point, and only
    `kb build` loads it."""
    (tmp_path / "one.md").write_text(answer_text(snippets=["check('one is one', 1 == 1, 1)"]))
    code = (f"from kb.cli import main\n"
            f"assert main(['check', {str(tmp_path / 'one.md')!r}, '--db', {str(tmp_path / 'kb.sqlite3')!r}]) == 0")
    loaded = loaded_modules(code)
    assert "kb" in loaded and "numpy" in loaded
    assert [name for name in loaded if name in WEB] == []


def test_python_m_kb_is_the_kb_command():
    """Same commands, `build` included (review: `python -m kb build` used to be an invalid choice)."""
    installed = subprocess.run([str(KB), "--help"], capture_output=True, text=True, timeout=60)
    module = subprocess.run([sys.executable, "-m", "kb", "--help"], capture_output=True, text=True, timeout=60)
    assert installed.returncode == module.returncode == 0
    assert installed.stdout == module.stdout
    assert "build" in module.stdout and "check" in module.stdout

