"""API fuzzing: schemathesis generates requests from the OpenAPI document and holds every response to it.

In-process (WSGI) against an app over the small answers of `service_fixtures`, with a bounded
number of examples per operation so that it runs in CI. Fails on any 5xx and on any response whose
status, content type, headers or body disagree with the document.

One test item per operation (`schema.parametrize()` gives them one node ID, and pytest-xdist
then runs only one of them): each item asserts it sent requests, and the module fails at its end
if an operation it collected did not run. Hypothesis also fuzzes `limit` of /api/search.

The schema is built from `service.openapi.spec()` at import (schemathesis' lazy
`pytest.from_fixture` loader does not work under pytest 9), and the test checks that the app
serves exactly that document at /api/openapi.json; requests go to the app through `app=`.
"""
import importlib
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_fixtures import write_small_answers

from service import create_app
from service.openapi import spec

schema = schemathesis.openapi.from_dict(spec())
# What schemathesis and Hypothesis import lazily while the tests below run, imported now, at
# collection: pytest rewrites the modules of its entry-point plugins (both are) as they are first
# imported, and on CPython before 3.11.8 an AST built while another thread builds one can raise
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). Imported
# mid-test, with an app's threads running, `schemathesis.transport.wsgi` failed one fresh-clone
# run in three. (The list: the modules new in sys.modules after collection, by a watching plugin.)
for _module in ("schemathesis.transport.wsgi", "schemathesis.transport.asgi", "schemathesis.engine.errors",
                "schemathesis.engine.events", "schemathesis.engine.statistic", "schemathesis.engine.summary",
                "schemathesis.generation.body_overrides", "schemathesis.generation.dictionaries",
                "schemathesis.reporting.html.writer", "schemathesis.reporting.junitxml",
                "schemathesis.reporting.recorders", "schemathesis.specs.openapi.object_authorization",
                "schemathesis.wfc.escalation", "hypothesis.internal.conjecture.optimiser",
                "hypothesis.strategies._internal.flatmapped", "hypothesis.strategies._internal.regex"):
    importlib.import_module(_module)
OPERATIONS = {op.ok().label: op.ok() for op in schema.get_all_operations()}
FUZZ = settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Random slugs almost never name an answer: mix in real slugs (and figure names) so the
    200 responses of every operation are generated and checked too, not only the 404s."""
    if not path_parameters or "slug" not in path_parameters:
        return st.just(path_parameters)
    real = st.sampled_from(["sigmoid-slope", "averaging", "wrong-claim"]).map(lambda slug: {**path_parameters, "slug": slug})
    if "name" in path_parameters:
        real = st.sampled_from([{**path_parameters, "slug": "sigmoid-slope", "name": "0-0.svg"},
                                {**path_parameters, "slug": "sigmoid-slope"}, {**path_parameters, "name": "0-0.svg"}])
    return st.one_of(st.just(path_parameters), real)


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    answers = write_small_answers(root / "answers")
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(root / "kb.sqlite3"), "KB_TIMEOUT": 20,
                      "TESTING": True})
    assert app.test_client().get("/api/openapi.json").get_json() == spec()
    yield app
    app.extensions["kb"].close()


def test_every_operation_of_the_document_is_an_item():
    documented = sorted(op["operationId"] for path in spec()["paths"].values() for op in path.values())
    assert sorted(op.definition.raw["operationId"] for op in OPERATIONS.values()) == documented
    assert len(OPERATIONS) == 9


@pytest.fixture(scope="module")
def fuzzed_operations(request):
    """The operations fuzzed in this module; at its end, every one collected must be among them."""
    ran: set[str] = set()
    yield ran
    collected = {item.callspec.params["label"] for item in request.session.items
                 if getattr(item, "module", None) is request.module
                 and item.originalname == "test_api_operation_agrees_with_its_openapi_document"}
    assert collected <= ran, f"collected but not fuzzed: {sorted(collected - ran)}"


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_operation_agrees_with_its_openapi_document(label, fuzzed_app, fuzzed_operations):
    calls = []

    @given(case=OPERATIONS[label].as_strategy())
    @FUZZ
    def fuzz(case):
        calls.append(case.call_and_validate(app=fuzzed_app).status_code)

    fuzz()
    assert calls, f"no request was generated for {label}"
    fuzzed_operations.add(label)


def _valid_limit(text: str) -> bool:
    return re.fullmatch("[0-9]{1,2}", text) is not None and 1 <= int(text) <= 50


def _search_status(app, limit: str) -> int:
    response = app.test_client().get("/api/search", query_string={"q": "sigmoid", "limit": limit})
    assert response.status_code == 200 or response.mimetype == "application/problem+json"
    return response.status_code


@pytest.mark.parametrize("limit, status", [
    ("²", 400), ("٣", 400), ("１", 400), ("5 ", 400), ("+5", 400), ("1.0", 400), ("0", 400), ("51", 400),
    ("100", 400), ("", 400), ("05", 200), ("1", 200), ("50", 200)])
def test_search_limit_cases(limit, status, fuzzed_app):
    assert _search_status(fuzzed_app, limit) == status


@given(limit=st.text(max_size=4) | st.integers(-5, 60).map(str))
@FUZZ
def test_search_limit_is_ascii_digits_from_1_to_50(limit, fuzzed_app):
    assert _search_status(fuzzed_app, limit) == (200 if _valid_limit(limit) else 400), limit
