"""API fuzzing: schemathesis generates requests from the OpenAPI document and holds every response to it.

In-process (WSGI) against an app over the small answers of `service_fixtures`, with a bounded
number of examples per operation so that it runs in CI. Fails on any 5xx and on any response whose
status, content type, headers or body disagree with the document.

The schema is built from `service.openapi.spec()` at import (schemathesis' lazy
`pytest.from_fixture` loader does not work under pytest 9), and the test checks that the app
serves exactly that document at /api/openapi.json; requests go to the app through `app=`.
"""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from service import create_app
from service.openapi import spec
from service_fixtures import write_small_answers

schema = schemathesis.openapi.from_dict(spec())


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


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_agrees_with_its_openapi_document(case, fuzzed_app):
    case.call_and_validate(app=fuzzed_app)
