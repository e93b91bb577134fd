"""Running an answer's snippets in an isolated child process, and evidence from cache or run.

- `limits`: what a run may use (`Limits`: time, memory, output; the fixed resource limits every
  child gets) and when a raised limit makes stored evidence stale (`cut_short`).
- `frames`: the wire protocol between the runner and a child (length-prefixed JSON).
- `child`: what a forked child does with one request: run the snippets, capture output,
  checks and figures.
- `server`: the fork server (`python -m kb.run.server SOCKET`): preloads NumPy, keeps spare
  children forked, reaps them and kills what they left behind.
- `runner`: `Runner`, the client the library, CLI and pytest use; enforces the wall-clock limit.
- `checker`: evidence for many answers, from the cache when the code is unchanged, else a run.
"""
