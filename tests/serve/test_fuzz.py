"""Schema-driven fuzzing (schemathesis) of the retrieval API in-process: no input gives a 5xx.

Strategies come from the app's own OpenAPI schema, one hypothesis run per operation with a
bounded number of examples; both schema-conforming and (for text search) schema-violating
inputs are tried. The schemathesis pytest plugin's lazy fixtures do not work with pytest 9, so
the operations are driven directly.
"""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def api_schema(served_app):
    return schemathesis.openapi.from_asgi("/openapi.json", served_app)


def _operations(schema):
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def test_schema_lists_every_endpoint(api_schema):
    labels = {op.label for op in _operations(api_schema)}
    assert {"GET /health", "POST /search/text", "GET /search/study/{study_id}", "POST /search/upload",
            "GET /study/{study_id}", "GET /thumb/{study_id}/{sequence}.png"} <= labels


@pytest.mark.parametrize("label", ["GET /health", "POST /search/text", "GET /search/study/{study_id}",
                                   "POST /search/upload", "GET /study/{study_id}",
                                   "GET /thumb/{study_id}/{sequence}.png"])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors(api_schema, label, mode):
    from schemathesis import GenerationMode

    if mode == "negative" and label == "GET /health":
        pytest.skip("no parameters to violate")
    op = next(o for o in _operations(api_schema) if o.label == label)
    strategy = op.as_strategy(generation_mode=GenerationMode(mode))
    seen = []

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call()
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                            response.text[:300])

    run()
    assert seen
