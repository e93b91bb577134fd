"""The OpenAPI 3.1 description of the JSON API; tests hold the real responses to it."""
from __future__ import annotations

from kb import version
from kb.format.topics import TOPICS

from .serialize import ANSWER_FIELDS, LISTED, STRING_LIST

NULLABLE_NUMBER = {"type": ["number", "null"]}

SCHEMAS = {
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "detail"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"}, "detail": {"type": "string"}},
    },
    "Health": {
        "type": "object", "required": ["status", "answers", "version"], "additionalProperties": False,
        "properties": {"status": {"enum": ["ok", "degraded"]}, "answers": {"type": "integer", "minimum": 0},
                       "version": {"type": "string", "description": "The service's package version"},
                       "problems": {**STRING_LIST, "description": "what is degraded (stored evidence found "
                                                                  "unreadable, dropped and derived again)"}},
    },
    "AnswerListing": {
        "type": "object", "required": [*LISTED, "status", "url"], "additionalProperties": False,
        "properties": {**{name: ANSWER_FIELDS[name] for name in LISTED},
                       "status": {"$ref": "#/components/schemas/Status"}, "url": {"type": "string"}},
    },
    "AnswerList": {
        "type": "object", "required": ["answers"], "additionalProperties": False,
        "properties": {"answers": {"type": "array", "items": {"$ref": "#/components/schemas/AnswerListing"}}},
    },
    "Topic": {"enum": [*(t.key for t in TOPICS), None],
              "description": "The section of the Deep Learning Specialization the answer belongs to (null: none)"},
    "Status": {"enum": ["passed", "failed", "error", "timeout", "pending"]},
    "Check": {
        "type": "object", "required": ["claim", "passed", "value", "line"], "additionalProperties": False,
        "properties": {"claim": {"type": "string"}, "passed": {"type": "boolean"},
                       "value": {"type": ["string", "null"]}, "line": {"type": ["integer", "null"]},
                       "identity": {"type": "string", "description": "Given as check(..., identity=\"why\"): a "
                                    "mathematical identity shown on purpose, which `kb audit` lists instead of mutating"},
                       "audit": {"$ref": "#/components/schemas/CheckAudit"}},
    },
    "CheckAudit": {
        "type": "object", "required": ["status", "mutation", "line"], "additionalProperties": False,
        "description": "What `kb audit` found (present once the answer's current code has been audited): "
                       "killed = a small breakage of the code the check depends on makes it fail",
        "properties": {"status": {"enum": ["killed", "survived", "identity", "failing", "unreached"]},
                       "mutation": {"type": ["string", "null"], "examples": ["`1 / m` → `2 / m`"],
                                    "description": "The breakage that made it fail (killed only)"},
                       "line": {"type": ["integer", "null"], "description": "The .md line of that breakage"}},
    },
    "AuditSummary": {
        "type": "object", "description": "The answer's `kb audit` in numbers (present once its current code has been audited)",
        "required": ["checks", "killed", "identity", "survived", "failing", "unreached", "summary"],
        "additionalProperties": False,
        "properties": {**{k: {"type": "integer", "minimum": 0}
                          for k in ("checks", "killed", "identity", "survived", "failing", "unreached")},
                       "summary": {"type": "string", "examples": ["5 of 6 checks shown able to fail"]}},
    },
    "SnippetError": {
        "type": ["object", "null"], "required": ["type", "message", "line"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                       "line": {"type": ["integer", "null"]}, "traceback": {"type": ["string", "null"]}},
    },
    "Snippet": {
        "type": "object",
        "required": ["index", "line", "code", "status", "stdout", "stderr", "truncated", "duration_ms",
                     "error", "figures", "figure_alts", "checks", "attrs"],
        "additionalProperties": False,
        "properties": {
            "index": {"type": "integer"}, "line": {"type": "integer"}, "code": {"type": "string"},
            "status": {"enum": ["passed", "failed", "error", "timeout", "skipped", "norun"]},
            "stdout": {"type": "string"}, "stderr": {"type": "string"}, "truncated": {"type": "boolean"},
            "duration_ms": NULLABLE_NUMBER, "error": {"$ref": "#/components/schemas/SnippetError"},
            "figures": {"type": "array", "items": {"type": "string"}, "description": "URLs of SVG figures"},
            "figure_alts": STRING_LIST, "checks": {"type": "array", "items": {"$ref": "#/components/schemas/Check"}},
            "attrs": STRING_LIST,
            "notes": {**STRING_LIST, "description": "what the runner's bounds cut or replaced (then `truncated`)"},
        },
    },
    "Evidence": {
        "type": "object", "required": ["slug", "status", "ran_at", "duration_ms", "environment", "snippets", "counts"],
        "additionalProperties": False,
        "properties": {
            "slug": {"type": "string"}, "status": {"$ref": "#/components/schemas/Status"},
            "ran_at": {"type": ["string", "null"], "format": "date-time"}, "duration_ms": NULLABLE_NUMBER,
            "environment": {"type": "object", "required": ["python", "numpy"],
                            "properties": {"python": {"type": "string"}, "numpy": {"type": "string"}}},
            "snippets": {"type": "array", "items": {"$ref": "#/components/schemas/Snippet"}},
            "counts": {"$ref": "#/components/schemas/Counts"},
            "audit": {"$ref": "#/components/schemas/AuditSummary"},
        },
    },
    "Counts": {
        "type": "object", "description": "How far the run got; checks not reached are counted from the code.",
        "required": ["snippets", "snippets_ran", "checks", "checks_passed", "checks_not_reached", "summary"],
        "additionalProperties": False,
        "properties": {"snippets": {"type": "integer", "minimum": 0}, "snippets_ran": {"type": "integer", "minimum": 0},
                       "checks": {"type": "integer", "minimum": 0}, "checks_passed": {"type": "integer", "minimum": 0},
                       "checks_not_reached": {"type": "integer", "minimum": 0},
                       "summary": {"type": "string", "examples": ["ran 1 of 4 snippets; 3 of 3 checks so far hold, 7 not reached"]}},
    },
    "Answer": {
        "type": "object", "required": [*ANSWER_FIELDS, "html", "evidence"], "additionalProperties": False,
        "properties": {**ANSWER_FIELDS, "html": {"type": "string"},
                       "evidence": {"$ref": "#/components/schemas/Evidence"}},
    },
    "SearchResults": {
        "type": "object", "required": ["query", "confident", "fit", "ready", "results"], "additionalProperties": False,
        "properties": {
            "query": {"type": "string"},
            "confident": {"type": "boolean", "description": "Whether the first result is, by the fitted confidence "
                          "rule (its score and its margin over the second), the answer asked for; when false the "
                          "results are still the nearest answers"},
            "fit": {"type": "string", "enum": ["one", "two", "none"],
                    "description": "one: confident; two: two neighbouring answers fit about equally (the reader "
                    "picks); none: no answer fits yet"},
            "ready": {"type": "boolean", "description": "False while the semantic stage is being built after a "
                      "start on a database without vectors: the results come from the lexical stage alone and "
                      "are never confident"},
            "results": {"type": "array", "items": {
                "type": "object", "required": ["slug", "title", "summary", "score", "url", "section"],
                "additionalProperties": False,
                "properties": {"slug": {"type": "string"}, "title": {"type": "string"}, "summary": {"type": "string"},
                               "score": {"type": "number", "minimum": 0, "maximum": 1,
                                         "description": "Calibrated probability that this is the answer asked for"},
                               "url": {"type": "string", "description": "The answer's page, at its top (title, summary, short answer)"},
                               "section": {"description": "The best-matching section: its anchor on the page ('' "
                                           "for the text before the first heading) and its title",
                                           "type": "object", "required": ["anchor", "title"], "additionalProperties": False,
                                           "properties": {"anchor": {"type": "string"}, "title": {"type": "string"}}}}}},
        },
    },
}


def _json(schema: str, description: str, media: str = "application/json") -> dict:
    return {"description": description, "content": {media: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _problem(description: str, headers: dict | None = None) -> dict:
    response = _json("Problem", description, "application/problem+json")
    if headers:
        response["headers"] = headers
    return response


SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
NOT_FOUND = _problem("No answer with this slug")
NOT_MODIFIED = {"description": "Not modified (If-None-Match matched the ETag)"}


def spec() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "kb: executable answers about neural-network fundamentals", "version": version(),
                 "description": "Answers whose claims are checked by running NumPy snippets. "
                                "GET responses carry an ETag and honour If-None-Match."},
        "paths": {
            "/api/docs": {"get": {"operationId": "apiPage", "summary": "This description as a page for people",
                             "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/healthz": {"get": {"operationId": "health", "responses": {"200": _json("Health", "Service is up")}}},
            "/api/answers": {"get": {
                "operationId": "listAnswers",
                "parameters": [{"name": "tag", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "Only the answers with this tag"},
                               {"name": "topic", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "Only the answers in this topic (its key, e.g. shallow-networks)"}],
                "responses": {"200": _json("AnswerList", "Every answer, by title"), "304": NOT_MODIFIED}}},
            "/api/answers/{slug}": {"get": {
                "operationId": "getAnswer", "parameters": [SLUG],
                "responses": {"200": _json("Answer", "The answer with its evidence"), "304": NOT_MODIFIED,
                              "404": NOT_FOUND}}},
            "/api/answers/{slug}/evidence": {"get": {
                "operationId": "getEvidence", "parameters": [SLUG],
                "responses": {"200": _json("Evidence", "The answer's latest evidence"), "304": NOT_MODIFIED,
                              "404": NOT_FOUND}}},
            "/api/answers/{slug}/run": {"post": {
                "operationId": "runAnswer", "parameters": [SLUG],
                "description": "Runs the answer again and stores the fresh evidence. A run of the same answer that "
                               "finished less than KB_RUN_COOLDOWN seconds ago (default 10) is returned instead "
                               "(its ran_at says when). Requires Content-Type: application/json; a browser request "
                               "marked cross-site (Sec-Fetch-Site, Origin) is refused. KB_RUNS=off refuses every run.",
                "requestBody": {"required": True, "description": "Ignored, but it must be JSON (e.g. {})",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": _json("Evidence", "Fresh evidence from running the answer now, or from the run that just finished"),
                    "403": _problem("Runs are switched off (KB_RUNS=off), or the request came from another site"),
                    "404": NOT_FOUND,
                    "415": _problem("The request is not application/json"),
                    "429": _problem("Too many runs at once", {"Retry-After": {
                        "description": "Seconds to wait", "schema": {"type": "integer"}}}),
                }}},
            "/api/answers/{slug}/figures/{name}": {"get": {
                "operationId": "getFigure",
                "parameters": [SLUG, {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "An SVG figure",
                                      "content": {"image/svg+xml": {"schema": {"type": "string"}}}},
                              "304": NOT_MODIFIED, "404": _problem("No such answer or figure")}}},
            "/api/search": {"get": {
                "operationId": "search",
                "parameters": [
                    {"name": "q", "in": "query", "required": True,
                     # at least one character the server does not strip as white space
                     "schema": {"type": "string", "minLength": 1, "pattern": "[^\\s\\x1c-\\x1f\\x85]"},
                     "description": "A question in free text"},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5}}],
                "responses": {"200": _json("SearchResults", "Answers best first"), "304": NOT_MODIFIED,
                              "400": _problem("Missing or blank q, or limit not ASCII digits from 1 to 50")}}},
            "/api/openapi.json": {"get": {"operationId": "openapi", "responses": {
                "200": {"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": SCHEMAS},
    }
