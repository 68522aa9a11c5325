"""What a browser does before it posts a form: read the page's CSRF token, sign in with a key."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def csrf_token(c: TestClient, page: str = "/sign-in") -> str:
    """The token the page put in its forms for this client's session (a new session gets one on its first page)."""
    return re.search(r'name="csrf_token" value="([^"]+)"', c.get(page).text).group(1)


def sign_in(c: TestClient, key: str) -> str:
    """Sign this client in with key; returns the new session's CSRF token."""
    r = c.post("/sign-in", data={"api_key": key, "csrf_token": csrf_token(c), "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_token(c)
