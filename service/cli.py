"""`kb build`: the service's command, added to `kb` through the `kb.commands` entry-point group.

It lives here, not in `kb.cli`, so that the core library never imports Flask or the service
(import-linter checks the rule); `kb.cli` loads this module only when `build` runs.
"""
from __future__ import annotations

import sys

from kb import cli
from kb.search.embeddings import ModelFileError

from .export import ExportError, build


def add_build(commands) -> dict:
    parser = commands.add_parser("build", help="write the knowledge base as static HTML")
    parser.add_argument("outdir", help="output directory: new, empty, or an earlier export (which is replaced)")
    defaults = cli.shared_settings()
    parser.add_argument("--answers", default=defaults.answers, help=f"answers directory (default: {defaults.answers})")
    parser.add_argument("--db", default=defaults.db, help=f"SQLite evidence cache (default: {defaults.db})")
    return {"build": cmd_build}


def cmd_build(args) -> int:
    try:
        pages, errors = build(args.answers, args.db, args.outdir)
    except (ExportError, ModelFileError) as exc:
        print(f"kb build: {exc}", file=sys.stderr)
        return 2
    for error in errors:
        print(error, file=sys.stderr)
    print(f"wrote {pages} pages to {args.outdir}")
    return 2 if errors else 0

