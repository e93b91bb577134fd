"""The layer rule: the core library `kb` never imports Flask or the service.

`kb` is what CI, pytest and authors use; the service is one of its users. Checked on the source
(every import statement of every module), so a lazy import inside a function counts too.
"""
import ast

from helpers import ROOT

FORBIDDEN = ("flask", "werkzeug", "jinja2", "service")


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_kb_never_imports_the_service_or_flask():
    offending = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted((ROOT / "kb").rglob("*.py"))
                 for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN]
    assert offending == []


def test_the_rule_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def build():\n    from service.export import build\n    import flask\n")
    assert list(imported_modules(module)) == ["service.export", "flask"]
