"""The web app's gateway responses, as synthesized, on LocalStack's API Gateway.

A REST API with one mock route gets every gateway response of the
synthesized template (``put_gateway_response``, which checks each type's
name and status code), is deployed, and answers a path no route has.
LocalStack (2026.3) applies a response's status code but not yet its
template or headers (its ``gateway_exception.py`` leaves both as a TODO), so
the bodies are checked by ``test_templates.py`` on the template itself.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.integration]


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client("apigateway", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_gateway_answers_an_unknown_path_404(templates: dict[str, Any],
                                             localstack_endpoint: str) -> None:
    (api_resource,) = templates["compute"].find_resources("AWS::Serverless::Api").values()
    answers = api_resource["Properties"]["DefinitionBody"][
        "x-amazon-apigateway-gateway-responses"]
    client = _client(localstack_endpoint)
    try:
        api = client.import_rest_api(body=json.dumps({
            "swagger": "2.0", "info": {"title": f"fmn-test-gw-{uuid.uuid4().hex[:8]}",
                                       "version": "1"},
            "paths": {"/api/v1/hello": {"get": {
                "responses": {"200": {"description": "ok"}},
                "x-amazon-apigateway-integration": {
                    "type": "mock",
                    "requestTemplates": {"application/json": '{"statusCode": 200}'},
                    "responses": {"default": {"statusCode": "200", "responseTemplates": {
                        "application/json": '{"ok": true}'}}}}}}},
        }).encode())
    except client.exceptions.ClientError as exc:  # pragma: no cover - setup
        pytest.fail(f"LocalStack's API Gateway refused the API ({exc}): is apigateway in "
                    "its SERVICES (scripts/localstack.sh)?")
    api_id = api["id"]
    try:
        for kind, answer in answers.items():
            client.put_gateway_response(restApiId=api_id, responseType=kind, **answer)
        stored = {r["responseType"]: r for r in
                  client.get_gateway_responses(restApiId=api_id, limit=500)["items"]}
        for kind, answer in answers.items():
            assert stored[kind]["defaultResponse"] is False, kind
            if "statusCode" in answer:  # else API Gateway's own status stays
                assert stored[kind]["statusCode"] == answer["statusCode"], kind
        client.create_deployment(restApiId=api_id, stageName="api")
        base = f"{localstack_endpoint}/_aws/execute-api/{api_id}/api"
        assert _get(f"{base}/api/v1/hello") == (200, b'{"ok": true}')
        status, _ = _get(f"{base}/api/v1/no-such-route")
        assert status == 404  # API Gateway's own answer would be 403
    finally:
        client.delete_rest_api(restApiId=api_id)
