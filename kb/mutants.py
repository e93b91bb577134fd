"""Mutants of an answer's code: small, plausible breakages of what its checks compute.

The static half of `kb audit` (the running half is `kb.audit`). For every `check(...)` call
of an answer this module finds the statements its condition depends on, and lists the
mutants of those statements in a fixed order, so that an audit reproduces.

Operators. We follow mutmut's operator set (`mutmut/node_mutation.py`: numbers, arithmetic
and augmented-assignment swaps, comparison and `and`/`or` swaps, `not` removed, `True`/`False`
swapped) and take from cosmic-ray (`src/cosmic_ray/operators/`) its number offsets and the
zero-iteration `for` loop, narrowed and extended for numerical code:

- ``number``: 0 → 1; 1 → 0 and 2; an integer n → n + 1 and n // 2; a float x → 2x and x / 2
  (mutmut and cosmic-ray add ±1, which leaves most float constants of a NumPy computation
  meaningfully the same breakage; doubling and halving are the slips people make: 1/m, lr, ε).
  Never a seed (`default_rng(0)`, `seed(0)`): another seed is not a breakage.
- ``operator``: + ↔ −, * ↔ /, // → /, % → /, ** → *, @ → * (mutmut's table plus @), and the
  same for augmented assignments (+= ↔ −=, *= ↔ /=).
- ``compare``: a comparison negated (< → >=, > → <=, == → !=, …; cosmic-ray replaces every
  comparison by every other; the negation is the one that always changes the outcome), ``is``
  ↔ ``is not``, ``in`` ↔ ``not in``; ``and`` ↔ ``or``; ``not x`` → ``x``; ``-x`` → ``x``.
- ``function``: a NumPy function or method swapped for its usual confusion, where shapes allow:
  sum/mean, max/min, maximum/minimum, argmax/argmin, exp/expm1, log/log1p, std/var, zeros/ones,
  floor/ceil, sin/cos (this operator is ours: mutmut swaps string methods the same way).
- ``keyword``: `keepdims=True` ↔ `False` (mutmut's True/False swap), `axis=k` → `axis=None`.
- ``drop``: a statement replaced by `pass` (an assignment that only updates a name already
  defined, an augmented assignment, a call for its effect such as `losses.append(J)`), and a
  `for` loop that runs zero times (cosmic-ray's zero-iteration-for-loop).

Mutants never touch a `check(...)` call (its claim, condition or value), strings, `print`
calls or plotting calls. Each mutant is a text edit at the exact span `ast` gives, inside one
line or replacing whole lines with as many lines: line numbers never move, so the checks of
a mutant's evidence map back to the original checks by their `.md` line.

Dependencies are traced coarsely, as reaching definitions over the answer's top-level
statements (all runnable snippets share one namespace, in order): the statements that last
assign a name the condition reads, and transitively what those read; a statement that
updates a name in place (`x += …`, `x[i] = …`, `x.append(…)`, `rng.normal(…)`, anything in a
loop or branch) keeps the earlier assignments in play; a function's body is followed from
where it is called. A mutant is a candidate for a check when it lies in a statement the check
depends on; candidates are ordered nearest dependency first, one mutant of each statement
before a second of any.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from kb.format import syntax
from kb.format.answer import Answer, Snippet

# The NumPy confusions the `function` operator makes (both ways where listed both ways).
SWAPS = {
    "sum": "mean", "mean": "sum", "max": "min", "min": "max", "amax": "amin", "amin": "amax",
    "nanmax": "nanmin", "nanmin": "nanmax",
    "maximum": "minimum", "minimum": "maximum", "argmax": "argmin", "argmin": "argmax",
    "exp": "expm1", "expm1": "exp", "log": "log1p", "log1p": "log", "std": "var", "var": "std",
    "zeros": "ones", "ones": "zeros", "zeros_like": "ones_like", "ones_like": "zeros_like",
    "floor": "ceil", "ceil": "floor", "sin": "cos", "cos": "sin", "cumsum": "cumprod", "cumprod": "cumsum",
}
BINOPS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "/"), ast.Pow: ("**", "*"), ast.MatMult: ("@", "*"),
}
COMPARES: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Lt: ("<", ">="), ast.Gt: (">", "<="), ast.LtE: ("<=", ">"), ast.GtE: (">=", "<"),
    ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="),
}
SEEDING = {"default_rng", "seed", "RandomState", "Generator", "PCG64", "SeedSequence"}
PLOTTING = {"plot", "scatter", "bar", "barh", "hist", "imshow", "contour", "contourf", "fill_between",
            "semilogy", "semilogx", "loglog", "errorbar", "axhline", "axvline", "annotate", "text", "legend",
            "subplots", "figure", "subplot", "tight_layout", "savefig", "colorbar", "add_patch", "grid",
            "quiver", "stem", "step", "pie", "twinx", "suptitle", "close", "show"}
PLOT_PREFIXES = ("set_", "tick_")
# Names whose method calls change state held elsewhere: only these are in-place updates of a module.
IN_PLACE = {"shuffle", "copyto", "fill_diagonal", "put", "place", "at", "seed"}
KIND_ORDER = ("operator", "number", "function", "compare", "drop", "keyword")
RNG_STATE = "<numpy global random state>"


@dataclass(frozen=True)
class Mutant:
    """One text edit of one snippet: `code[start:end]` becomes `replacement`."""

    id: int
    snippet: int  # Snippet.index
    line: int  # line within the snippet's code (1-based) where the edit starts
    start: int  # character offsets in the snippet's code
    end: int
    replacement: str
    kind: str
    description: str  # for people: "`1/m` → `2/m`", "drop `dW = dW / m`"


@dataclass
class Site:
    """One `check(...)` call written in the answer."""

    snippet: int  # Snippet.index
    start: int  # first and last line of the call within the snippet's code (1-based)
    end: int
    md_line: int  # the call's first line in the .md file
    claim: str  # the claim as written (source text when it is not a plain string)
    identity: str | None  # the reason given with identity="…", if any
    candidates: list[int] = field(default_factory=list)  # Mutant ids, in the order they are tried


@dataclass
class Analysis:
    sites: list[Site]
    mutants: list[Mutant]


@dataclass
class _Unit:
    """A top-level statement of one of the answer's snippets."""

    pos: int
    snippet: Snippet
    node: ast.stmt
    writes: set[str] = field(default_factory=set)  # assigned outright
    updates: set[str] = field(default_factory=set)  # changed in place or conditionally
    reads: set[str] = field(default_factory=set)  # read when the statement runs
    deferred: set[str] = field(default_factory=set)  # read by a function body when it is called
    mutants: list[Mutant] = field(default_factory=list)


def analyse(answer: Answer) -> Analysis:
    """Every check site of the answer with its candidate mutants, in a reproducible order."""
    units: list[_Unit] = []
    trees: dict[int, ast.Module] = {}
    for snippet in answer.runnable:
        try:
            tree = syntax.parse(snippet.code)
        except SyntaxError:
            continue  # the runner reports it; nothing to audit in it
        trees[snippet.index] = tree
        for node in tree.body:
            units.append(_Unit(len(units), snippet, node))
    modules = _module_names(units)
    for unit in units:
        _effects(unit, modules)
    mutants: list[Mutant] = []
    bound: set[str] = set()  # names some earlier statement assigns: dropping a re-assignment leaves them defined
    for unit in units:
        unit.mutants = list(_unit_mutants(unit, mutants, modules, bound))
        bound |= unit.writes | unit.updates
    sites: list[Site] = []
    for unit in units:
        for call in _check_calls(unit.node):
            site = _site(unit, call)
            if site.identity is None:
                site.candidates = _candidates(unit, call, units)
            sites.append(site)
    return Analysis(sites, mutants)


# Appended after a snippet's last line (no line moves): its figures are closed before the runner
# would render them to SVG, which is most of a plotting snippet's time and no part of a check.
NO_FIGURES = '\n__import__("matplotlib.pyplot").pyplot.close("all")'


def mutate(answer: Answer, mutant: Mutant | None, last_snippet: int | None = None, figures: bool = False) -> Answer:
    """A copy of the answer with the mutant's edit applied (None: no edit); without the snippets
    after `last_snippet` (if given), which cannot change what the checks before them show; and,
    unless `figures`, with every figure closed at the end of its snippet instead of rendered."""
    snippets = []
    for snippet in answer.snippets:
        if last_snippet is not None and snippet.index > last_snippet:
            break
        code = snippet.code
        if mutant is not None and snippet.index == mutant.snippet:
            code = code[:mutant.start] + mutant.replacement + code[mutant.end:]
        if not figures and snippet.runs:
            code += NO_FIGURES
        snippets.append(dataclasses.replace(snippet, code=code))
    return dataclasses.replace(answer, snippets=tuple(snippets))


def valid(answer: Answer, mutant: Mutant) -> bool:
    """True if the mutated snippet still parses (checked only for the mutants that run)."""
    snippet = next(s for s in answer.snippets if s.index == mutant.snippet)
    try:
        syntax.parse(snippet.code[:mutant.start] + mutant.replacement + snippet.code[mutant.end:])
    except SyntaxError:
        return False
    return True


def fingerprint(mutants: list[Mutant]) -> str:
    """A short hash of a mutant list (tests and the cache use it to see the order is stable)."""
    text = "\n".join(f"{m.snippet}:{m.start}:{m.end}:{m.replacement}" for m in mutants)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- what each statement reads and writes -------------------------------------------------

def _module_names(units: list[_Unit]) -> set[str]:
    names = set()
    for unit in units:
        for node in ast.walk(unit.node):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    if isinstance(node, ast.Import) or name[:1].islower() and "." not in alias.name:
                        names.add(name)
    return names


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _function_free_reads(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    args = node.args
    params = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    body: list[ast.AST] = list(node.body) if isinstance(node.body, list) else [node.body]
    local = {n.id for b in body for n in ast.walk(b) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    declared = {name for b in body for n in ast.walk(b) if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
    return {name for b in body for name in _loads(b)} - ((params | local) - declared)


def _effects(unit: _Unit, modules: set[str]) -> None:
    node = unit.node
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        unit.writes.add(node.name)
        for extra in (*node.decorator_list, *(node.args.defaults if not isinstance(node, ast.ClassDef) else []),
                      *(node.bases if isinstance(node, ast.ClassDef) else [])):
            unit.reads |= _loads(extra)
        if isinstance(node, ast.ClassDef):
            unit.deferred |= {n for b in node.body for n in _loads(b)}
        else:
            unit.deferred |= _function_free_reads(node)
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        unit.writes |= {a.asname or a.name.split(".")[0] for a in node.names}
        return
    compound = not isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr))
    lambdas = [n for n in ast.walk(node) if isinstance(n, ast.Lambda)]
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
        unit.deferred |= _function_free_reads(node.value)
        inside = set()
    else:
        inside = {id(n) for lam in lambdas for n in ast.walk(lam.body)}
        for lam in lambdas:
            unit.reads |= _function_free_reads(lam)
    for n in ast.walk(node):
        if id(n) in inside:
            continue
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load):
                unit.reads.add(n.id)
            elif isinstance(n.ctx, ast.Store):
                (unit.updates if compound else unit.writes).add(n.id)
        elif isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, (ast.Store, ast.Del)):
            root = _root(n)
            if isinstance(root, ast.Name):
                unit.updates.add(root.id)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            root = _root(n.func)
            if not isinstance(root, ast.Name):
                continue
            if root.id not in modules:
                unit.updates.add(root.id)  # a method may change its object: rng.normal, list.append
            elif "random" in _dotted(n.func):
                unit.updates.add(RNG_STATE)
                unit.reads.add(RNG_STATE)
            elif n.func.attr in IN_PLACE and n.args:
                target = _root(n.args[0])
                if isinstance(target, ast.Name):
                    unit.updates.add(target.id)
            for keyword in n.keywords:
                if keyword.arg == "out" and isinstance(_root(keyword.value), ast.Name):
                    unit.updates.add(_root(keyword.value).id)  # type: ignore[attr-defined]
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        unit.writes.discard(node.target.id)
        unit.updates.add(node.target.id)
    unit.writes -= unit.updates


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


# --- check sites and their dependencies ----------------------------------------------------

def _is_check(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"


def _check_calls(node: ast.AST) -> list[ast.Call]:
    return sorted((n for n in ast.walk(node) if _is_check(n)), key=lambda n: (n.lineno, n.col_offset))  # type: ignore[misc]


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == name), None)


def _site(unit: _Unit, call: ast.Call) -> Site:
    claim = _argument(call, 0, "claim")
    if isinstance(claim, ast.Constant) and isinstance(claim.value, str):
        text = claim.value
    else:
        text = (ast.get_source_segment(unit.snippet.code, claim) or "") if claim is not None else ""
    identity = next((k.value for k in call.keywords if k.arg == "identity"), None)
    reason = None
    if identity is not None:
        given = identity.value if isinstance(identity, ast.Constant) else ast.get_source_segment(unit.snippet.code, identity)
        reason = str(given or "identity")
    return Site(snippet=unit.snippet.index, start=call.lineno, end=call.end_lineno or call.lineno,
                md_line=unit.snippet.line + call.lineno, claim=" ".join(text.split()), identity=reason)


def _candidates(unit: _Unit, call: ast.Call, units: list[_Unit]) -> list[int]:
    """The check's candidate mutants: nearest dependencies first, one per statement in turn."""
    depth: dict[int, int] = {}
    condition = _argument(call, 1, "condition")
    seeds = _loads(condition) if condition is not None else set()
    nested = not (isinstance(unit.node, ast.Expr) and unit.node.value is call)
    if nested:  # in a loop, a branch or a function: the statement's own locals feed the condition
        depth[unit.pos] = 0
        seeds |= unit.reads | unit.deferred
        if isinstance(unit.node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # followed from its callers
            for user in units[unit.pos + 1:]:
                if unit.node.name in user.reads | user.deferred:
                    depth.setdefault(user.pos, 1)
                    seeds |= user.reads
    work = [(name, unit.pos, unit.pos, 1) for name in sorted(seeds)]
    seen: set[tuple[str, int]] = set()
    while work:
        name, before, caller, level = work.pop(0)
        if (name, before) in seen:
            continue
        seen.add((name, before))
        for writer in reversed(units[:before]):
            if name not in writer.writes and name not in writer.updates:
                continue
            if level < depth.get(writer.pos, 1 << 30):
                depth[writer.pos] = level
            work += [(n, writer.pos, writer.pos, level + 1) for n in sorted(writer.reads)]
            work += [(n, caller, caller, level + 1) for n in sorted(writer.deferred)]  # called where it is used
            if name in writer.writes:
                break
    ranked = []
    for pos, level in depth.items():
        for rank, mutant in enumerate(units[pos].mutants):
            ranked.append(((level, rank, -pos), mutant.id))
    return [mutant_id for _, mutant_id in sorted(ranked)]


# --- mutation operators ---------------------------------------------------------------------

class _Source:
    """Offsets in a snippet's code from ast's (line, UTF-8 byte column) positions."""

    def __init__(self, code: str):
        self.code = code
        self.lines = code.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def offset(self, line: int, col: int) -> int:
        text = self.lines[line - 1]
        return self.starts[line - 1] + len(text.encode()[:col].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.offset(node.end_lineno, node.end_col_offset))  # type: ignore[attr-defined]

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.code[start:end]


def _excluded_spans(tree: ast.AST) -> list[ast.AST]:
    """Nodes whose inside is never mutated: check calls, print calls, plotting, strings."""
    out = []
    for node in ast.walk(tree):
        if _is_check(node) or isinstance(node, ast.JoinedStr):
            out.append(node)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            root = _root(func)
            if (isinstance(func, ast.Name) and name == "print") or name in PLOTTING \
                    or name.startswith(PLOT_PREFIXES) or (isinstance(root, ast.Name) and root.id in ("plt", "ax", "axes", "fig")):
                out.append(node)
            elif name in SEEDING:
                out.extend(node.args)
                out.extend(k.value for k in node.keywords)
    return out


def _unit_mutants(unit: _Unit, mutants: list[Mutant], modules: set[str], bound: set[str]) -> Iterator[Mutant]:
    source = _Source(unit.snippet.code)
    blocked = {id(n) for root in _excluded_spans(unit.node) for n in ast.walk(root)}
    by_kind: dict[str, list[tuple[int, int, str, int, int, str, str]]] = {k: [] for k in KIND_ORDER}
    variants: dict[tuple[str, int], int] = {}
    rebound = bound | _defined_inside(unit)
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(unit.node):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node

    def add(kind: str, node: ast.AST, start: int, end: int, replacement: str, context: ast.AST | None = None,
            description: str | None = None) -> None:
        line = node.lineno  # type: ignore[attr-defined]
        if description is None:
            if context is None or not hasattr(context, "lineno"):  # e.g. a comprehension's clause
                context = node
            shown = _context(source, context, parents)
            cstart, cend = source.span(shown)
            before = source.code[cstart:cend]
            after = source.code[cstart:start] + replacement + source.code[end:cend]
            description = f"`{_short(before)}` → `{_short(after)}`"
        variant = variants[(kind, start)] = variants.get((kind, start), -1) + 1  # 2x is variant 0, x/2 variant 1
        by_kind[kind].append((variant, line, kind, start, end, replacement, description))

    for node in ast.walk(unit.node):
        if id(node) in blocked:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            start, end = source.span(node)
            for value in _numbers(node.value):
                add("number", node, start, end, value)
            if isinstance(parents.get(id(node)), ast.keyword) and parents[id(node)].arg == "axis":  # type: ignore[attr-defined]
                add("keyword", node, start, end, "None", parents.get(id(parents[id(node)])))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            start, end = source.span(node)
            add("keyword" if isinstance(parents.get(id(node)), ast.keyword) else "compare", node, start, end,
                str(not node.value), parents.get(id(parents.get(id(node), node))))
        elif isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
            old, new = BINOPS[type(node.op)]
            found = _operator_between(source, node.left, node.right, old)
            if found is not None:
                add("operator", node, found, found + len(old), new, node)
        elif isinstance(node, ast.AugAssign) and type(node.op) in BINOPS:
            old, new = BINOPS[type(node.op)]
            found = _operator_between(source, node.target, node.value, old + "=")
            if found is not None:
                add("operator", node, found, found + len(old), new, node)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            op, (left, right) = node.ops[0], (node.left, node.comparators[0])
            pairs = {**COMPARES, ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"),
                     ast.In: ("in", "not in"), ast.NotIn: ("not in", "in")}
            if type(op) in pairs:
                old, new = pairs[type(op)]
                found = _operator_between(source, left, right, old)
                if found is not None:
                    add("compare", node, found, found + len(old), new, node)
        elif isinstance(node, ast.BoolOp) and len(node.values) == 2:
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            found = _operator_between(source, node.values[0], node.values[1], old)
            if found is not None:
                add("compare", node, found, found + len(old), new, node)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)) \
                and not isinstance(node.operand, ast.Constant):
            start, _ = source.span(node)
            if isinstance(node.op, ast.USub):
                add("operator", node, start, start + 1, "", node)  # `-x` → `x`: the sign only, not a bracket
            else:
                gap = len(source.code[start + 3:]) - len(source.code[start + 3:].lstrip(" "))
                add("compare", node, start, start + 3 + gap, "" if gap else " ", node)  # `not x` → `x`
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SWAPS:
            root = _root(node.func)
            numpy_call = isinstance(root, ast.Name) and (root.id in modules or not isinstance(node.func.value, ast.Name))
            if numpy_call or node.func.attr in ("sum", "mean", "max", "min", "std", "var", "argmax", "argmin", "cumsum"):
                end = source.offset(node.func.end_lineno, node.func.end_col_offset)  # type: ignore[arg-type]
                start = end - len(node.func.attr)
                add("function", node, start, end, SWAPS[node.func.attr], node)
        if isinstance(node, ast.stmt) and _droppable(node, rebound, blocked):
            start, end = source.span(node)
            lines = node.end_lineno - node.lineno  # type: ignore[operator]
            add("drop", node, start, end, "pass" + "\n" * lines, description=f"drop `{_short(source.text(node))}`")
        if isinstance(node, ast.For) and id(node.iter) not in blocked and node.iter.lineno == node.iter.end_lineno:
            start, end = source.span(node.iter)
            add("drop", node, start, end, "[]",
                description=f"the loop `for … in {_short(source.text(node.iter))}` runs zero times")
    # One of each kind before a second of any; within a kind, one edit of every place before a
    # second edit of any, and the last lines first (where the result is computed).
    queues = [sorted(by_kind[k], key=lambda m: (m[0], -m[1], m[3])) for k in KIND_ORDER]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    seen = set()
    for _, _line, kind, start, end, replacement, description in order:
        if (start, end, replacement) in seen:
            continue
        seen.add((start, end, replacement))
        mutant = Mutant(len(mutants), unit.snippet.index, source.code.count("\n", 0, start) + 1, start, end,
                        replacement, kind, description)
        mutants.append(mutant)
        yield mutant


def _defined_inside(unit: _Unit) -> set[str]:
    """Names a statement of this unit rebinds (coarse: a name it both reads and writes, or
    writes twice): dropping one assignment to them leaves the name defined."""
    counts: dict[str, int] = {}
    for node in ast.walk(unit.node):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            counts[node.id] = counts.get(node.id, 0) + 1
    return {name for name, count in counts.items() if count > 1} | (unit.reads & (unit.writes | unit.updates))


def _droppable(node: ast.AST, defined: set[str], blocked: set[int]) -> bool:
    if id(node) in blocked:
        return False
    if isinstance(node, ast.AugAssign):
        return True
    if isinstance(node, ast.Assign):
        targets = {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        subscripted = all(isinstance(t, (ast.Subscript, ast.Attribute)) for t in node.targets)
        return subscripted or bool(targets) and targets <= defined
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return not _check_calls(node) and id(node.value) not in blocked
    return False


def _operator_between(source: _Source, left: ast.AST, right: ast.AST, symbol: str) -> int | None:
    """The offset of `symbol` between two operands (only brackets, blanks and comments lie there)."""
    _, start = source.span(left)
    end, _ = source.span(right)
    gap = source.code[start:end]
    at = 0
    while at < len(gap):
        if gap[at] == "#":
            at = gap.find("\n", at)
            if at < 0:
                return None
            continue
        if gap.startswith(symbol, at):
            after = gap[at + len(symbol):at + len(symbol) + 1]
            if symbol[-1] in "*/<>=!" and after in ("*", "/", "="):  # `*` must not match `**`, `<` not `<=`
                at += 1
                continue
            if symbol.isalpha() or " " in symbol:
                before = gap[at - 1:at] if at else " "
                if (before.isalnum() or before == "_") or (after.isalnum() or after == "_"):
                    at += 1
                    continue
            if symbol == "in" and gap[:at].rstrip().endswith("not"):
                return None
            return start + at
        at += 1
    return None


def _numbers(value: int | float) -> list[str]:
    if isinstance(value, int):
        if value == 0:
            return ["1"]
        if value == 1:
            return ["0", "2"]
        return [str(value + 1)] + ([str(value // 2)] if value >= 4 else [])
    if value == 0:
        return ["1.0"]
    return [repr(value * 2), repr(value / 2)]


def _context(source: _Source, node: ast.AST, parents: dict[int, ast.AST]) -> ast.AST:
    """The expression to show around an edit: the node, or its parent when that stays short."""
    shown = node
    for _ in range(2):
        parent = parents.get(id(shown))
        if isinstance(parent, ast.keyword):  # `alpha=0.0`, not a bare `0.0`
            shown = parent
            parent = parents.get(id(parent))
        if not isinstance(parent, ast.expr) or _is_check(parent):
            break
        if parent.lineno != parent.end_lineno or len(source.text(parent)) > 40:
            break
        shown = parent
    return shown


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
