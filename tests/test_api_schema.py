"""Schemathesis against the live server: no server error, no response that
breaks the served OpenAPI document (a few dozen examples per operation).

The operations are run from one test with Hypothesis directly rather than
with schemathesis' pytest plugin, which does not load under this pytest."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ECHO = """
    def run(inputs):
        return inputs
"""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25


def test_api_conforms_to_its_openapi_document(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    client = api.client("ops")
    client.wait(client.submit("echo", {"n": 1})["task"]["id"])
    # Reads carry a real token, so that generated requests reach the handlers
    # rather than stopping at authentication.
    token = {"Authorization": f"Bearer {client.token(ttl=3600)}"}
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        _check(operation, api.url, token, CHECKS)


def _check(operation, url, token, checks):
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def conforms(case):
        if case.method.upper() == "GET":
            case.headers = {**(case.headers or {}), **token}
        case.call_and_validate(base_url=url, checks=checks)

    conforms()
