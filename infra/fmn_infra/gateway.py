"""API Gateway's own answers in the web API's error format.

On AWS, some requests never reach the web app: API Gateway answers them
itself (an unknown path or method, a body over its limit, throttling, the
function failing or timing out), by default as ``{"message": "..."}`` and,
for an unknown path, a puzzling ``403 Missing Authentication Token``.  The
API promises ``{"error", "detail", "field"}`` for every error
(``docs/web-api.md``), so :func:`gateway_responses` gives each of those
answers that shape, with the codes the app uses for the same status
(:data:`fmn.web.http.FRAMEWORK_ERRORS`) and the headers it sends with its
own errors.  :func:`apply` writes them into the Chalice app's REST API
definition (the ``x-amazon-apigateway-gateway-responses`` extension).

The detail is API Gateway's message, JSON-quoted by API Gateway itself
(``$context.error.messageString``); nothing from the request is echoed.
"""

from __future__ import annotations

import json
from typing import Any

from fmn.web.http import COMMON_HEADERS, FRAMEWORK_ERRORS

#: API Gateway's response types this API can meet, with their default status
#: (docs.aws.amazon.com/apigateway/latest/developerguide/supported-gateway-response-types.html),
#: which picks the error code; the status itself is left as API Gateway sets it.  The
#: web app has no authorizer, API key or request validator, so those types never occur.
RESPONSE_TYPES: dict[str, int] = {
    "ACCESS_DENIED": 403,
    "WAF_FILTERED": 403,
    "REQUEST_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "THROTTLED": 429,
    "QUOTA_EXCEEDED": 429,
    "API_CONFIGURATION_ERROR": 500,
    "INTEGRATION_FAILURE": 504,
    "INTEGRATION_TIMEOUT": 504,
}
#: Without an authorizer, API Gateway says "Missing Authentication Token" for a
#: path or method no route has: answered as the app answers an unknown path.
NO_ROUTE = ("MISSING_AUTHENTICATION_TOKEN", 404, "no such path or method")
#: Every other 4xx and 5xx of API Gateway.
DEFAULTS = {"DEFAULT_4XX": "invalid", "DEFAULT_5XX": "internal"}
#: Seconds a client waits before trying again after a throttle or an unavailable answer.
RETRY_AFTER = {429: "1", 503: "5", 504: "5"}

EXTENSION = "x-amazon-apigateway-gateway-responses"


def _response(code: str, detail_vtl: str, *, status: int | None = None,
              retry_for: int | None = None) -> dict[str, Any]:
    """One gateway response: ``status`` replaces API Gateway's own, ``retry_for`` (a
    status) adds its ``Retry-After``."""
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store",
               **COMMON_HEADERS}
    if retry_for in RETRY_AFTER:
        headers["Retry-After"] = RETRY_AFTER[retry_for]
    answer: dict[str, Any] = {
        # header values are static strings in single quotes
        "responseParameters": {f"gatewayresponse.header.{name}": f"'{value}'"
                               for name, value in headers.items()},
        "responseTemplates": {"application/json": (
            '{"error": ' + json.dumps(code) + ', "detail": ' + detail_vtl
            + ', "field": null}')},
    }
    if status is not None:
        answer["statusCode"] = str(status)
    return answer


def gateway_responses() -> dict[str, dict[str, Any]]:
    """The ``x-amazon-apigateway-gateway-responses`` of the web app's REST API."""
    message = "$context.error.messageString"  # already a JSON string, quotes included
    out = {kind: _response(FRAMEWORK_ERRORS[status], message, retry_for=status)
           for kind, status in RESPONSE_TYPES.items()}
    kind, status, detail = NO_ROUTE
    out[kind] = _response(FRAMEWORK_ERRORS[status], json.dumps(detail), status=status)
    for kind, code in DEFAULTS.items():
        out[kind] = _response(code, message)
    return out


def apply(rest_api: Any) -> None:
    """Write the responses into a Chalice-packaged ``AWS::Serverless::Api`` (a CfnResource)."""
    rest_api.add_override(f"Properties.DefinitionBody.{EXTENSION}", gateway_responses())
