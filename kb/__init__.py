"""kb: answers about neural-network fundamentals, backed by executable NumPy evidence.

The layers, each importing only those above it (tests/test_layers.py enforces the last rule):

- format: `topics`, `blocks` (the one fence lexer), `answer` (front matter, snippets, `path:line` errors)
- evidence: `evidence` (the record's shape and rules), `forkserver` + `runner` (isolated runs),
  `database` + `store` (the SQLite cache), `checker` (cache or run)
- reading: `render` (Markdown, MathML, code), `index` (search)
- `library` (one app's answers, evidence and index: the service talks to this object only)
- front ends: `cli` (`kb check/new/lint`), `pytest_plugin`, `authoring`
- `mutants` + `audit` (`kb audit`: can each check fail? mutation testing of the evidence)

`kb` never imports Flask or the `service` package: the service, and `kb build` (which renders the
service's pages), are built on top of it.
"""
