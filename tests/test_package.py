"""The package as users install and run it: the layer rule at run time, the `kb` entry point.

The import rule itself (layers within `kb`; `kb` never imports Flask or `service`) is checked on
the source by import-linter (`lint-imports`, contracts in pyproject.toml). These tests check what
that cannot see: the modules an import actually loads, whatever a dependency pulls in.
"""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

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
