"""Who is calling and what they may do: an API key sent as a header, or a browser session (an HMAC-signed cookie
made by signing in with a key) whose CSRF token every form post and every cookie-authenticated write must carry;
knows nothing of torch.

The cookie holds {session id, key id, key name, CSRF token, expiry}, signed with the app's secret; it is HttpOnly
and SameSite=Lax. Every browser gets one (anonymous until it signs in) so that even anonymous form posts carry a
token. A signed-in session also lives on the server (app.store.keys' browser sessions), checked at every request
that carries one: signing out ends it there, it expires there whatever the cookie says, and a revoked key ends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

from app.serving.asgi import Hooks, cookie_header
from app.store import keys
from app.store.models import APIKey
from app.web.deps import DATABASE_DOWN, SessionDep

COOKIE = "saex_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = ("/sign-in", "/sign-out", "/health", "/ready", "/static/")  # open where reading requires sign-in


@dataclass
class BrowserSession:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    key_id: int | None = None
    name: str | None = None
    expires: int = 0
    sid: str | None = None  # the server-side session's id (signed in only)


class CookieSigner:
    """base64(json) + "." + base64(HMAC-SHA256(secret, that)); anything tampered, malformed or expired is None."""

    def __init__(self, secret: bytes, max_age_s: int) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the session secret must be at least {MIN_SECRET_BYTES} bytes: set SAEX_SECRET_KEY to "
                             f"a long random string ({MAKE_SECRET})")
        self._secret, self.max_age_s = secret, max_age_s

    def _mac(self, payload: bytes) -> bytes:
        return base64.urlsafe_b64encode(hmac.new(self._secret, payload, hashlib.sha256).digest()).rstrip(b"=")

    def dumps(self, s: BrowserSession) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(asdict(s), separators=(",", ":")).encode()).rstrip(b"=")
        return (payload + b"." + self._mac(payload)).decode()

    def loads(self, value: str | None) -> BrowserSession | None:
        if not value or len(value) > 4096 or value.count(".") != 1:
            return None
        payload, mac = value.encode("ascii", "replace").split(b".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            s = BrowserSession(**data)
        except (ValueError, TypeError):
            return None
        return s if s.expires > time.time() else None


PLACEHOLDER_SECRETS = frozenset({"change-me-to-a-long-random-string", "change-me"})  # .env.example's, and the like
MIN_SECRET_BYTES = 32
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'


def check_secret(configured: str) -> None:
    """ValueError (saying how to make one) for a secret anyone could guess: the example's placeholder, or one
    shorter than MIN_SECRET_BYTES."""
    if configured.strip() in PLACEHOLDER_SECRETS or configured.strip().lower().startswith("change-me"):
        raise ValueError("SAEX_SECRET_KEY is the placeholder from .env.example, which anyone can read: with it, "
                         f"anyone can forge a signed-in session. Make a secret with {MAKE_SECRET} and set it")
    if len(configured.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"SAEX_SECRET_KEY is {len(configured.encode())} bytes; it must be at least "
                         f"{MIN_SECRET_BYTES} random bytes. Make one with {MAKE_SECRET}")


def session_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret (refused when guessable, see check_secret), or one made once and kept in the data
    directory (readable by its owner only), so that sessions survive restarts of a single web process. Several web
    processes need SAEX_SECRET_KEY."""
    if configured:
        check_secret(configured)
        return configured.encode()
    path = data_dir / "session_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()


def install_sessions(app: FastAPI, signer: CookieSigner, *, secure: bool) -> None:
    """Every request gets request.state.browser (its session, new if it had none); the cookie is (re)sent when the
    session is new or changed."""
    app.state.session_max_age_s = signer.max_age_s

    def begin(request: Request) -> None:
        found = signer.loads(request.cookies.get(COOKIE))
        request.state.browser = found or BrowserSession(expires=int(time.time()) + signer.max_age_s)
        request.state.browser_changed = found is None

    def start(request: Request, headers: MutableHeaders) -> None:
        if request.state.browser_changed:
            headers.append("set-cookie", cookie_header(COOKIE, signer.dumps(request.state.browser),
                                                       max_age=signer.max_age_s, httponly=True, samesite="lax",
                                                       secure=secure, path="/"))

    app.add_middleware(Hooks, begin=begin, start=start)


def _check_live(request: Request) -> None:
    browser: BrowserSession = request.state.browser
    try:
        with request.app.state.sessions() as session, session.begin():
            record = keys.live_browser_session(session, sid=browser.sid or "", key_id=browser.key_id)
    except DATABASE_DOWN as exc:
        raise HTTPException(503, "the database is unavailable; retry shortly", headers={"Retry-After": "5"}) from exc
    if record is None:  # signed out, expired on the server, or its key revoked: anonymous from here on
        start_session(request, None)


async def live_session(request: Request) -> None:
    """An app-wide dependency: a cookie that says "signed in" counts only while its server-side session is live.
    Anonymous browsers (most requests) cost nothing here."""
    browser: BrowserSession | None = getattr(request.state, "browser", None)
    if browser is not None and browser.key_id is not None and not getattr(request.state, "session_checked", False):
        request.state.session_checked = True
        await run_in_threadpool(_check_live, request)


def _header_key(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key is None and authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


def sign_in_gate(request: Request) -> None:
    """Where reading requires sign-in (an app-wide dependency then): anything but PUBLIC_PATHS needs a live API key
    header or a signed-in browser; pages send the browser to /sign-in, the API answers 401."""
    if request.url.path.startswith(PUBLIC_PATHS):
        return
    key = _header_key(request.headers.get("x-api-key"), request.headers.get("authorization"))
    browser: BrowserSession = request.state.browser
    record = None
    if key or browser.key_id is not None:
        try:
            with request.app.state.sessions() as session, session.begin():
                record = keys.verify(session, key=key) if key else keys.live(session, key_id=browser.key_id)
        except DATABASE_DOWN as exc:
            raise HTTPException(503, "the database is unavailable; retry shortly",
                                headers={"Retry-After": "5"}) from exc
    if record is not None:
        return
    if request.url.path.startswith("/api/"):
        raise HTTPException(401, "this server requires sign-in: send an API key as the X-API-Key header",
                            headers={"WWW-Authenticate": "Bearer"})
    raise HTTPException(303, "sign in first", headers={"Location": f"/sign-in?next={quote(request.url.path)}"})


def start_session(request: Request, record: APIKey | None, sid: str | None = None) -> None:
    """This browser's cookie now says signed in as record with server-side session sid (None: anonymous); a fresh
    CSRF token either way, so a token seen before is worthless."""
    request.state.browser = BrowserSession(key_id=record.id if record else None, name=record.name if record else None,
                                           expires=int(time.time()) + request.app.state.session_max_age_s,
                                           sid=sid if record else None)
    request.state.browser_changed = True
    request.state.session_checked = True


def sign_in_browser(request: Request, session: Session, record: APIKey) -> None:
    """Sign this browser in as record: a new server-side session (any earlier one of this browser ends)."""
    sign_out_browser(request, session)
    sid = keys.begin_browser_session(session, key_id=record.id, max_age_s=request.app.state.session_max_age_s)
    start_session(request, record, sid)


def sign_out_browser(request: Request, session: Session) -> None:
    """End this browser's server-side session, so its cookie, replayed from anywhere, signs nobody in."""
    browser: BrowserSession = request.state.browser
    if browser.sid:
        keys.end_browser_session(session, sid=browser.sid)
    start_session(request, None)


async def sent_csrf_token(request: Request) -> str:
    token = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        token = (await request.form()).get("csrf_token")
    return token if isinstance(token, str) else ""


async def csrf_protect(request: Request) -> None:
    """Browser form posts: the token of this browser's session, as the csrf_token field or X-CSRF-Token header."""
    if request.method in SAFE_METHODS:
        return
    if not hmac.compare_digest(await sent_csrf_token(request), request.state.browser.csrf):
        raise HTTPException(403, "this form is stale or was not sent from SAE Explorer's own page (CSRF check): "
                                 "reload the page and try again")


async def caller(request: Request, session: SessionDep, x_api_key: Annotated[str | None, Header()] = None,
                 authorization: Annotated[str | None, Header()] = None) -> APIKey | None:
    """The live key behind this request: its X-API-Key / Bearer header (a wrong one is refused outright), else the
    signed-in browser session (whose writes must carry the session's CSRF token), else None."""
    key = _header_key(x_api_key, authorization)
    if key:
        # on a thread: verifying writes last_used_at, and a SQLite write lock must not stall the event loop
        record = await run_in_threadpool(keys.verify, session, key=key)
        if record is None:
            raise HTTPException(403, "the API key is unknown or revoked")
        return record
    browser: BrowserSession = request.state.browser
    if browser.key_id is None:
        return None
    record = await run_in_threadpool(keys.live, session, key_id=browser.key_id)
    if record is None:  # revoked since signing in: the session is over
        start_session(request, None)
        return None
    if request.method not in SAFE_METHODS:
        await csrf_protect(request)
    return record


CallerDep = Annotated[APIKey | None, Depends(caller)]


async def require_writer(who: CallerDep) -> APIKey:
    if who is None:
        raise HTTPException(401, "this write needs an API key: send it as the X-API-Key header (create one with "
                                 "`saex keys create --name NAME`), or sign in at /sign-in in a browser",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


WriterDep = Annotated[APIKey, Depends(require_writer)]
