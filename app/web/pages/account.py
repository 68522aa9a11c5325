"""Signing in and out in a browser: a lab member pastes the API key an admin made for them (`saex keys create`)
once; the browser then holds a signed session cookie and writes from pages carry its CSRF token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.store import keys
from app.web.auth import csrf_protect, sign_in_browser, sign_out_browser
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])


def safe_next(target: str) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, settings: SettingsDep,
                 next: Annotated[str, Query(max_length=2000)] = "/") -> Response:
    return render(request, "sign_in.html", {"model_slug": settings.served_slug(), "next": safe_next(next)})


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(request: Request, session: SessionDep, settings: SettingsDep,
            api_key: Annotated[str, Form(max_length=200)] = "",
            next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
    record = keys.verify(session, key=api_key.strip())
    if record is None:
        return render(request, "sign_in.html", {
            "model_slug": settings.served_slug(), "next": safe_next(next),
            "error": "That API key is unknown or revoked: paste the whole key (saex_...) an admin made for you with "
                     "`saex keys create --name YOU`."}, status_code=403)
    sign_in_browser(request, session, record)
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/sign-out")
def sign_out(request: Request, session: SessionDep) -> Response:
    """Ends the session on the server too: its cookie, replayed later, signs nobody in."""
    sign_out_browser(request, session)
    return RedirectResponse("/", status_code=303)
