"""The web API's OpenAPI 3.1 description, generated from its routes and models.

Each route of ``webapp/app.py`` is declared once, as an :class:`Operation`
(method, path, summary, body model, answer model, query parameters, who may
call it); the edge registers the route from it, and :func:`document` builds
the description from the same list, with the JSON Schema of the pydantic
models of :mod:`fmn.web.schema` as its components.  Path parameters come
from the path itself.  Nothing is written twice, so the description cannot
drift from what the server checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from fmn import auth
from fmn.web import schema

REF = "#/components/schemas/{model}"
JSON = "application/json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: What a path parameter may be: the ids the server makes, names, signed tokens.
PATH_PARAMETER = {"type": "string", "minLength": 1, "maxLength": 2048,
                  "pattern": "^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$"}


@dataclass(frozen=True)
class Operation:
    """One route: what it takes, what it answers, who may call it.

    ``query``: a model of :mod:`fmn.web.schema` declaring the query parameters.
    ``answer``: a model (or a type such as ``list[Model]``), ``"html"``, ``"file"`` (any
    type), ``"redirect"`` or ``None`` (no body); ``redirects``: a form sent answers 302.
    ``answer_headers``: ``(name, description)`` of headers every success carries.
    ``access``: ``"user"`` (a session), ``"public"`` (none;
    unsafe methods still need the CSRF token) or ``"token"`` (the path's signed token
    is the credential: no session, no CSRF token).
    """

    method: str
    path: str
    summary: str
    body: Any = None
    body_types: tuple[str, ...] = (JSON,)
    body_required: bool = True
    ok: int = 200
    answer: Any = None
    query: Any = None
    access: str = "user"
    errors_html: bool = False
    redirects: bool = False
    answer_headers: tuple[tuple[str, str], ...] = ()

    @property
    def content_types(self) -> list[str]:
        """What the edge lets in (the framework answers 415 to anything else)."""
        return list(self.body_types)

    @property
    def csrf(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE") and self.access != "token"

    @property
    def error_pages(self) -> bool:
        """Whether its errors are pages (a page's route, opened by a person), not JSON."""
        return self.errors_html or self.answer == "html"


def _schema(t: Any, mode: str, defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _no_null_defaults(TypeAdapter(t).json_schema(
        mode=mode, ref_template=REF))  # type: ignore[arg-type]
    defs.update(out.pop("$defs", {}))
    name = getattr(t, "__name__", None)
    if isinstance(t, type) and name and out.get("type") == "object":
        defs[name] = out
        return {"$ref": REF.format(model=name)}
    return out


def _no_null_defaults(node: Any) -> Any:
    """The schema without ``"default": null`` (an optional field is left out, never null)."""
    if isinstance(node, dict):
        return {k: _no_null_defaults(v) for k, v in node.items()
                if not (k == "default" and v is None)}
    if isinstance(node, list):
        return [_no_null_defaults(v) for v in node]
    return node


def _operation(op: Operation, defs: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary,
                           "operationId": f"{op.method.lower()}{_op_id(op.path)}"}
    params: list[dict[str, Any]] = [
        {"name": n, "in": "path", "required": True, "schema": PATH_PARAMETER}
        for n in _PARAM.findall(op.path)]
    if op.query is not None:
        query = _no_null_defaults(TypeAdapter(op.query).json_schema(mode="validation",
                                                                     ref_template=REF))
        defs.update(query.pop("$defs", {}))
        params += [{"name": name, "in": "query", "required": False, "schema": prop}
                   for name, prop in query.get("properties", {}).items()]
    if params:
        doc["parameters"] = params
    if op.body is not None:
        body_schema = _schema(op.body, "validation", defs)
        doc["requestBody"] = {"required": op.body_required,
                              "content": {t: {"schema": body_schema} for t in op.body_types}}
    ok: dict[str, Any] = {"description": "success"}
    if op.answer == "html":
        ok["content"] = {HTML: {"schema": {"type": "string"}}}
    elif op.answer == "file":
        ok["content"] = {"*/*": {"schema": {}}}
    elif op.answer == "redirect":
        ok["headers"] = {"Location": {"schema": {"type": "string"}, "required": True}}
    elif op.answer is not None:
        ok["content"] = {JSON: {"schema": _schema(op.answer, "serialization", defs)}}
    for name, description in op.answer_headers:
        ok.setdefault("headers", {})[name] = {"description": description, "required": True,
                                              "schema": {"type": "string"}}
    error: dict[str, Any] = {"description": "an error (docs/web-api.md lists the codes)",
                             "content": {JSON: {"schema": {"$ref": REF.format(model="Error")}}}}
    if op.error_pages:
        error["content"][HTML] = {"schema": {"type": "string"}}
    doc["responses"] = {str(op.ok): ok, "default": error}
    if op.redirects:
        doc["responses"]["302"] = {"description": "a form was sent: on to the page",
                                   "headers": {"Location": {"schema": {"type": "string"},
                                                            "required": True}}}
    if op.access == "user":
        doc["security"] = [{"session": [], "csrf": []}] if op.csrf else [{"session": []}]
    elif op.csrf:
        doc["security"] = [{"csrf": []}]
    else:
        doc["security"] = []
    return doc


def _op_id(path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", _PARAM.sub(lambda m: "by " + m.group(1), path))
    return "".join(w[:1].upper() + w[1:] for w in words) or "Root"


def document(operations: Iterable[Operation],
             session_cookie: str = auth.SESSION_COOKIE) -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``operations``, signed in by ``session_cookie``
    (``__Host-fmn_session`` over https: :func:`fmn.auth.cookie_name`)."""
    defs: dict[str, Any] = {}
    _schema(schema.Error, "serialization", defs)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, defs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fedora Notifications preferences API", "version": "1",
                 "description": "docs/web-api.md is the prose; every error is "
                                "{\"error\", \"detail\", \"field\"}."},
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": session_cookie},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}},
            "schemas": dict(sorted(defs.items()))},
        "paths": paths,
    }
