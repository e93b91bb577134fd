"""The lookup evaluation set for the benchmarks and the fit: (question, expected slug or None).

`tests/lookup_eval/` (loaded by its own `load()`) with its fixed dev/test split; the dev split
also gets the project's own phrasings of `tests/lookup_cases.py` (own phrasings are dev only).
`KB_EVAL_DIR` points at another copy of the set (while it is being gathered in another branch).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    folder = Path(os.environ.get("KB_EVAL_DIR", ROOT / "tests" / "lookup_eval"))
    init = folder / "__init__.py"
    if not init.is_file():
        return None, folder
    spec = importlib.util.spec_from_file_location("lookup_eval", init)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("lookup_eval", module)
    spec.loader.exec_module(module)
    return module, folder


def entries(split: str) -> list[tuple[str, str | None]]:
    """The split's questions; dev includes tests/lookup_cases.py. Only answers that exist count."""
    answers = {p.stem for p in (ROOT / "answers").glob("*.md")}
    module, folder = _module()
    out = []
    if module is not None:
        for entry in module.load(folder, ROOT / "answers", split=split):
            if entry.slug is None or entry.slug in answers:
                out.append((entry.question, entry.slug))
    if split == "dev":
        sys.path.insert(0, str(ROOT / "tests"))
        from lookup_cases import CASES
        out += [(q, slug) for q, slug in CASES if slug in answers]
    return out
