"""The answer file format: `answers/<slug>.md` read into a frozen `Answer`.

- `topics`: the fixed list of topics an answer may name.
- `blocks`: the one fence lexer (prose and fenced code), shared by every reader of a body.
- `answer`: front matter, snippets, validation, `path:line` errors (`FormatError`).
"""
