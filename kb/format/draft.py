"""Drafts: an answer that still holds the text `kb new` wrote is a draft, not an answer.

`kb new` writes a skeleton whose summary, prose and example check are placeholders
(`PLACEHOLDERS`); published as it is, it would read as an answer and could displace a real one in
search. The service keeps a draft off the home page, the topic and tag lists and search, and its
own page says it is a draft; `kb lint` names each placeholder left (`kb.authoring`).
"""
from __future__ import annotations

from .answer import Answer

PLACEHOLDERS = {  # what `kb new` writes and `kb lint` flags until the author replaces it
    "summary": "Answer the question in one or two sentences; the page and search results show this first.",
    "alias": "Another way a learner asks this question",
    "tag": "replace-this-tag",
    "source": "The lecture, paper or book section this explanation follows",
    "check": "the mean of 1,000 standard normal draws is within 0.1 of 0",
    "short answer": "Say the answer plainly, as in the summary.",
    "why": "Explain step by step in the course's notation",
    "caveat": "Say when the opposite choice is right.",
}
PROSE = ("short answer", "why", "caveat")


def is_draft(answer: Answer) -> bool:
    """Whether the answer still holds the skeleton's summary or prose (what a reader would take
    for the answer); a leftover tag, alias or source alone is for `kb lint` to name."""
    return (answer.summary.strip() == PLACEHOLDERS["summary"]
            or any(PLACEHOLDERS[key] in answer.body for key in PROSE))
