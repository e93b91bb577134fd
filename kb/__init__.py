"""kb: answers about neural-network fundamentals, backed by executable NumPy evidence.

One subpackage per subsystem, each importing only those below it (import-linter checks the
contracts in pyproject.toml, `make test` runs it):

- `kb.format`: the answer file (`answer`, the `blocks` fence lexer, `topics`)
- `kb.store`: the SQLite file (`evidence` the record's shape, `database`, `cache` the evidence
  cache, `gaps`)
- `kb.run`: running snippets in isolated children (`limits`, `frames`, `child`, `server` the
  fork server, `runner`, `checker` cache or run)
- `kb.search`: lookup, a question to answers (`index` FTS5, `embeddings`, `lookup`)
- `kb.render`: bodies to safe HTML (`markdown`, `mathml`)
- on top: `library` (one app's answers, evidence, rendering and lookup, reloaded on edits),
  `authoring` (`kb new`, `kb lint`), `notebook` (an answer as a Jupyter notebook), `cli` (the
  `kb` command), `pytest_plugin`
- `audit` (`kb audit`: can each check fail? mutation testing of the evidence) on `mutants` (a
  check's dependencies and their small breakages)

`kb` never imports Flask or the `service` package. The service adds `kb build` through the
`kb.commands` entry-point group, so `kb check` loads no web framework.
"""


def version() -> str:
    """The installed package's version (pyproject.toml's): `kb --version`, `/healthz`, the OpenAPI
    document. "unknown" when the package is not installed (a bare checkout on `sys.path`)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("kb-answers")
    except PackageNotFoundError:
        return "unknown"
