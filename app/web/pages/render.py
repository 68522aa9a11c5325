"""Rendering pages: the same URL answers a full page, or only its `#page` fragment when HTMX asks (HX-Request),
so every view is a link that opens the same thing; knows nothing of torch or the store."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from app.web.figures import show_token  # the one way tokens are shown, in pages and charts alike

FRONTEND = Path(__file__).resolve().parents[3] / "frontend"
templates = Jinja2Templates(directory=str(FRONTEND / "templates"))


def figure_json(fig: dict) -> Markup:
    """A figure dict as JSON safe inside a <script type="application/json"> block."""
    text = json.dumps(fig, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def heat(value: float, peak: float) -> str:
    """A background colour for a token: blue for positive, red for negative, alpha by |value| / peak."""
    if not peak or not value:
        return "transparent"
    a = min(1.0, abs(value) / peak) * 0.85
    return f"rgba(47,111,222,{a:.3f})" if value > 0 else f"rgba(209,73,91,{a:.3f})"


def shade(value: float, lo: float, hi: float) -> str:
    """A token's background on a legend's scale from lo (transparent) to hi (full blue); negative values, when lo
    is below zero, in red by |value| / max(|lo|, |hi|)."""
    if lo < 0:
        return heat(value, max(abs(lo), abs(hi)))
    if hi <= lo or value <= lo:
        return "transparent"
    return f"rgba(47,111,222,{min(1.0, (value - lo) / (hi - lo)) * 0.85:.3f})"


def duration(seconds: float) -> str:
    """Seconds as people say them: 42 s, 3 min 5 s, 2 h 10 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


templates.env.filters["tok"] = show_token
templates.env.filters["tok_lines"] = lambda token: show_token(token, lines=True)
templates.env.filters["duration"] = duration
templates.env.filters["figure"] = figure_json
templates.env.globals["heat"] = heat
templates.env.globals["shade"] = shade


def render(request: Request, template: str, context: dict, status_code: int = 200,
           headers: dict | None = None) -> HTMLResponse:
    """Full page (base layout) or, for HTMX, the page body only; the template reads `fragment`."""
    fragment = request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"
    browser = getattr(request.state, "browser", None)  # app.web.auth's session: its CSRF token goes in every form
    return templates.TemplateResponse(request, template, {
        **context, "fragment": fragment, "csrf_token": browser.csrf if browser else "",
        "signed_in_as": browser.name if browser else None}, status_code=status_code, headers=headers)


def redirect(request: Request, target: str) -> Response:
    """After a form's POST: HTMX follows HX-Redirect (a 204), a plain browser a 303 (See Other)."""
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
