"""Dependencies of the web app's routes: settings and a database session per request (who is calling is
app.web.auth's); knows nothing of torch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.config import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DATABASE_DOWN = (OperationalError, InterfaceError)  # what a stopped or restarting database raises


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the route returns without error and before its answer is sent
    (scope="function" below): a write is acknowledged only once it is stored, and a failed commit is the
    request's own 503, never a dropped connection after a 201."""
    factory = request.app.state.sessions
    try:
        with factory() as session, session.begin():
            yield session
    except DATABASE_DOWN as exc:  # the database is down or restarting: a clear 503, never a 500
        raise HTTPException(503, "the database is unavailable; retry shortly", headers={"Retry-After": "5"}) from exc


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
