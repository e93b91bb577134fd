"""Answer bodies to HTML, safe under a strict Content-Security-Policy.

- `markdown`: the pipeline (fences to snippet slots, Markdown, sanitising, highlighted code).
- `mathml`: `$…$` and `$$…$$` to MathML on the server, typeset as TeX would.
"""
