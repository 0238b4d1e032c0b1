"""dist-git and FASJSON as local HTTP servers (Starlette under uvicorn), in their real shapes.

The shapes follow the services' own code: dist-git's owner map
(``/extras/pagure_owner_alias.json``: one object per namespace, artifact ->
maintainers, groups as ``@group``), Pagure's project API
(``/api/0/<namespace>/<name>``: the project's JSON with ``access_users`` and
``access_groups`` by level), FASJSON v1 (``/v1/groups/<name>/members/``:
``{"result": [{"username", "uri"}], "page": {"total_results", "page_size",
"page_number", "total_pages", "next_page"}}``; ``/v1/users/<name>/``:
``{"result": {"username", "emails", "ircnicks", "locked", ...}}``; a locked
account is a 404, like a deleted one).

``Upstreams.mode`` breaks them on purpose: ``"fail"`` (HTTP 503), ``"cut"``
(the owner map's body cut in half, with a matching length: it does not
parse), ``"short"`` (a Content-Length larger than the body: the connection
closes early), ``"lose-page"`` (FASJSON's second page of members empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FASJSON_BASE = "/fasjson"


def pagure_project(namespace: str, name: str, owners: list[str],
                   groups: list[str]) -> dict[str, Any]:
    """A dist-git project as Pagure's ``Project.to_json(public=True)`` writes it."""
    users = [o for o in owners if not o.startswith("@")]
    return {
        "access_groups": {"admin": [], "collaborator": [], "commit": list(groups), "ticket": []},
        "access_users": {"admin": users[1:2], "collaborator": [], "commit": users[2:],
                         "owner": users[:1], "ticket": ["someone-with-ticket-access"]},
        "close_status": [], "custom_keys": [], "date_created": "1505394470",
        "date_modified": "1505394470", "description": f"The {name} package",
        "full_url": f"https://src.fedoraproject.org/{namespace}/{name}",
        "fullname": f"{namespace}/{name}", "id": 22781, "milestones": {}, "name": name,
        "namespace": namespace, "parent": None, "priorities": {}, "tags": [],
        "url_path": f"{namespace}/{name}",
        "user": {"fullname": users[0] if users else "orphan", "name": users[0] if users
                 else "orphan", "url_path": f"user/{users[0] if users else 'orphan'}"},
    }


def fasjson_user(name: str, emails: list[str], ircnicks: list[str],
                 locked: bool = False) -> dict[str, Any]:
    return {"result": {
        "certificates": None, "creation": "2014-02-13T10:12:33", "emails": emails,
        "github_username": None, "gitlab_username": None, "givenname": name.title(),
        "gpgkeyids": None, "human_name": f"{name.title()} Example", "ircnicks": ircnicks,
        "is_private": False, "locale": "en-US", "locked": locked, "pronouns": None,
        "rhbzemail": None, "rssurl": None, "sshpubkeys": None, "surname": "Example",
        "timezone": "UTC", "username": name,
        "uri": f"http://fasjson.example.org/v1/users/{name}/", "website": None}}


@dataclass
class Upstreams:
    owner_map: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "ok"
    page_size: int = 2
    requests: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/extras/pagure_owner_alias.json", self.owner_map_view),
            Route("/api/0/{namespace}/{name}", self.project_view),
            Route(FASJSON_BASE + "/v1/groups/{group}/members/", self.members_view),
            Route(FASJSON_BASE + "/v1/users/{user}/", self.user_view),
        ])

    async def owner_map_view(self, request: Request) -> Response:
        self.requests.append(request.url.path)
        if self.mode == "fail":
            return JSONResponse({"error": "dist-git is down"}, status_code=503)
        body = json.dumps(self.owner_map).encode()
        if self.mode == "cut":
            return Response(body[: len(body) // 2], media_type="application/json")
        if self.mode == "short":
            return Response(body[: len(body) // 2], media_type="application/json",
                            headers={"content-length": str(len(body))})
        return Response(body, media_type="application/json")

    async def project_view(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        key = {"container": "container"}.get(ns, ns)
        owners = self.owner_map.get(key, {}).get(name)
        if owners is None:
            return JSONResponse({"error": "Project not found", "error_code": "ENOPROJECT"},
                                status_code=404)
        return JSONResponse(pagure_project(ns, name, [o for o in owners if o[0] != "@"],
                                           [o[1:] for o in owners if o[0] == "@"]))

    async def members_view(self, request: Request) -> Response:
        self.requests.append(request.url.path)
        if self.mode == "fail":
            return JSONResponse({"message": "LDAP unavailable"}, status_code=500)
        group = request.path_params["group"]
        if group not in self.groups:
            return JSONResponse({"message": "Group not found", "name": group}, status_code=404)
        size = int(request.query_params.get("page_size") or self.page_size)
        size = min(size, self.page_size)  # the server caps the page, as FASJSON may
        number = int(request.query_params.get("page_number") or 1)
        members = self.groups[group]
        chunk = members[(number - 1) * size: number * size]
        if self.mode == "lose-page" and number > 1:
            chunk = []
        total_pages = max(1, -(-len(members) // size))
        page: dict[str, Any] = {"total_results": len(members), "page_size": size,
                                "page_number": number, "total_pages": total_pages}
        if number < total_pages:
            page["next_page"] = (f"{request.base_url}{request.url.path.lstrip('/')}"
                                 f"?page_size={size}&page_number={number + 1}")
        return JSONResponse({"result": [
            {"username": m, "uri": f"http://fasjson.example.org/v1/users/{m}/"}
            for m in chunk], "page": page})

    async def user_view(self, request: Request) -> Response:
        self.requests.append(request.url.path)
        if self.mode == "fail":
            return JSONResponse({"message": "LDAP unavailable"}, status_code=500)
        user = self.users.get(request.path_params["user"])
        if user is None or user["result"].get("locked"):
            # FASJSON filters locked accounts out (nsAccountLock): a 404 like a deleted one
            return JSONResponse({"message": "User not found"}, status_code=404)
        return JSONResponse(user)
