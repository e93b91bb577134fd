"""A snippet's Python parsed into an AST, one thread at a time.

Two threads building an AST at once can raise SystemError on CPython 3.11.7, the interpreter
here (python/cpython#106905: the AST converter's recursion counter is shared). The service
parses snippets on its request threads (the condition a failed check tested, the checks a
stopped snippet never reached), so every parse in the project goes through this one lock.
"""
from __future__ import annotations

import ast
import threading

_ONE_AT_A_TIME = threading.Lock()


def parse(code: str) -> ast.Module:
    """`ast.parse(code)` under the lock; raises SyntaxError as it does."""
    with _ONE_AT_A_TIME:
        return ast.parse(code)
