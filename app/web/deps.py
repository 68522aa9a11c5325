"""Dependencies of the web app's routes: settings, a database session per request, the caller's API key;
knows nothing of torch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.store import keys
from app.store.models import APIKey


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the route returns without error."""
    factory = request.app.state.sessions
    try:
        with factory() as session, session.begin():
            yield session
    except OperationalError as exc:  # the database is down or restarting: a clear 503, never a 500
        raise HTTPException(503, "the database is unavailable; retry shortly", headers={"Retry-After": "5"}) from exc


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def require_key(session: SessionDep, x_api_key: Annotated[str | None, Header()] = None,
                authorization: Annotated[str | None, Header()] = None) -> APIKey:
    """Writes need an API key: `X-API-Key: saex_...` or `Authorization: Bearer saex_...`."""
    key = x_api_key
    if key is None and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        raise HTTPException(401, "this write needs an API key: send it as the X-API-Key header "
                                 "(create one with `saex keys create --name NAME`)",
                            headers={"WWW-Authenticate": "Bearer"})
    record = keys.verify(session, key=key)
    if record is None:
        raise HTTPException(403, "the API key is unknown or revoked")
    return record


KeyDep = Annotated[APIKey, Depends(require_key)]
