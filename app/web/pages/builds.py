"""The dashboard build's page (/{model}/build): the latest build's progress, or why it failed. Pages that lack
dashboards while one runs embed its status, which polls this URL (as a fragment) until the build has ended."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.web.deps import SessionDep
from app.web.pages.render import render
from app.web.services.builds import build_status

router = APIRouter(include_in_schema=False)
# where the status links once the build is done (the page that embeds it): a path on this site, never another's
ReturnTo = Annotated[str, Query(max_length=2000, pattern=r"^/([^/\\\s]\S*)?$")]


@router.get("/{model}/build", response_class=HTMLResponse)
def build_page(request: Request, model: str, session: SessionDep, return_to: ReturnTo = "") -> Response:
    return render(request, "build.html", {"model_slug": model, "return_to": return_to,
                                          "build": build_status(session, model_slug=model)})
