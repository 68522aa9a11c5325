"""405 and OPTIONS for a service's API paths, from its own OpenAPI document: a method a path does not take is answered
405 with an `Allow` naming those it does (before a catch-all page route could claim the path: `GET /api/v1/analyze`
was a 422 from `/{model}/{sae}/{feature}`), `OPTIONS` is 204 with the same `Allow`, and a path under the prefix that
the document lacks is the API's 404. Knows nothing of torch, storage or what the routes do."""

from __future__ import annotations

import re

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

METHODS = ("get", "put", "post", "delete", "patch")


def method_table(paths: dict) -> list[tuple[re.Pattern, frozenset[str]]]:
    """Each documented path as a pattern ({param} matches one segment) with its methods (HEAD wherever GET: the
    services answer HEAD as GET)."""
    table = []
    for path, item in paths.items():
        methods = {m.upper() for m in item if m in METHODS}
        pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
        table.append((pattern, frozenset(methods | ({"HEAD"} if "GET" in methods else set()))))
    return table


def allowed_methods(table: list[tuple[re.Pattern, frozenset[str]]], path: str) -> set[str]:
    return set().union(*(methods for pattern, methods in table if pattern.match(path)))


class AllowedMethods:
    def __init__(self, app: ASGIApp, prefix: str = "/api/") -> None:
        self.app, self.prefix = app, prefix
        self._table: list[tuple[re.Pattern, frozenset[str]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix) or "app" not in scope:
            await self.app(scope, receive, send)
            return
        if self._table is None:  # the routes are all in place by the first request
            self._table = method_table({p: item for p, item in scope["app"].openapi().get("paths", {}).items()
                                        if p.startswith(self.prefix)})
        methods = allowed_methods(self._table, scope["path"].rstrip("/"))  # a trailing / is the router's redirect
        if scope["method"] in methods:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(methods))
        if not methods:  # no API path: a 404 of the API's, not a page route's answer
            response: Response = JSONResponse({"detail": f"there is no API endpoint at {scope['path']}"}, 404)
        elif scope["method"] == "OPTIONS":
            response = Response(status_code=204, headers={"Allow": allow})
        else:
            response = JSONResponse({"detail": f"{scope['method']} is not allowed here: this path takes {allow}"},
                                    status_code=405, headers={"Allow": allow})
        await response(scope, receive, send)
