"""The package as users install and run it: the layer rule at run time, the `kb` entry point.

The import rule itself (layers within `kb`; `kb` never imports Flask or `service`) is checked on
the source by import-linter (`lint-imports`, contracts in pyproject.toml). These tests check what
that cannot see: the modules an import actually loads, whatever a dependency pulls in.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
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


def run(*args, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.wheel
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel from what pyproject.toml declares, install it in a new virtual environment
    and run `kb check` and `python -m kb build` in a folder that is not the checkout.

    The dependencies are the ones `make` installed, seen through a path entry (no download, no
    second copy); `pip check` then holds the pins in requirements.txt to the ranges declared.
    """
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    for name in ("kb", "service"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", dist, source)
    [wheel] = dist.glob("kb_answers-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"kb/search/models/all-MiniLM-L6-v2-tokenizer.json", "kb/py.typed", "kb/run/server.py",
            "service/templates/base.html", "service/static/search.js",
            "service/static/fonts/NotoSansMath-Regular.woff2"} <= names
    assert "Requires-Dist: numpy" in metadata and "Requires-Dist: flask" in metadata
    assert "kb = kb.cli:main" in entry_points and "build = service.cli:add_build" in entry_points

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python, kb = venv / "bin" / "python", venv / "bin" / "kb"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--disable-pip-version-check", "-q",
        wheel)
    run(python, "-m", "pip", "check", "--disable-pip-version-check")

    work = tmp_path / "work"
    (work / "answers").mkdir(parents=True)
    (work / "answers" / "one.md").write_text(answer_text(title="Is one one?",
                                                         snippets=["check('one is one', 1 == 1, 1)"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "PYTHON"))}
    where = run(python, "-c", "import kb, service; print(kb.__file__, service.__file__)", cwd=work, env=env).stdout
    assert where.split() == [str(site / "kb" / "__init__.py"), str(site / "service" / "__init__.py")]
    checked = run(kb, "check", "answers/one.md", "--db", "kb.sqlite3", cwd=work, env=env)
    assert "1 passed" in checked.stdout
    built = run(python, "-m", "kb", "build", "site", "--db", "kb.sqlite3", cwd=work, env=env)
    assert "wrote" in built.stdout
    assert "Is one one?" in (work / "site" / "answers" / "one.html").read_text()
    assert (work / "site" / "static" / "style.css").is_file() and (work / "site" / "search-index.js").is_file()
