"""Lists of features (/lists: one's own; /lists/{id}: a list's permalink, readable by anyone who may read the site,
exported with ?format=json or csv): make a list, add features from their pages or by id, note each, rename, delete;
writes need a signed-in browser or an API key, and only the list's maker (or an admin key) changes it."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.store.collections import MAX_NOTE, MAX_TITLE
from app.store.models import APIKey
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import redirect, render
from app.web.services import lists as service

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])
ListId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
Feature = Annotated[int, Path(ge=0, le=2**31 - 1)]
SIGN_IN = "Lists belong to the key that makes them: sign in (at /sign-in, with an API key) to make or change one."


async def signed_in(who: CallerDep) -> APIKey:
    if who is None:
        raise HTTPException(401, SIGN_IN)
    return who


OwnerDep = Annotated[APIKey, Depends(signed_in)]


def export(view: dict, fmt: str) -> Response:
    """The list as a JSON document or a CSV table (one row per feature), as a download."""
    name = f"list-{view['id']}"
    rows = [{k: e[k] for k in service.EXPORT_FIELDS} for e in view["entries"]]
    if fmt == "json":
        body = {k: view[k] for k in ("id", "title", "description", "author", "created_at", "updated_at")}
        return Response(json.dumps({**body, "features": rows}, indent=1), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}.json"'})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=service.EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.get("/lists", response_class=HTMLResponse)
def my_lists(request: Request, session: SessionDep, settings: SettingsDep, who: CallerDep) -> Response:
    mine = service.lists_of(session, who=who) if who is not None else None
    return render(request, "lists.html", {"lists": mine, "max_title": MAX_TITLE, "max_note": MAX_NOTE,
                                          "model_slug": settings.served_slug()})


@router.post("/lists", response_class=HTMLResponse)
def create_list(request: Request, session: SessionDep, who: OwnerDep,
                title: Annotated[str, Form(max_length=MAX_TITLE)] = "",
                description: Annotated[str, Form(max_length=MAX_NOTE)] = "",
                model: Annotated[str | None, Form(max_length=64)] = None,
                sae: Annotated[str | None, Form(max_length=64)] = None,
                feature: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None) -> Response:
    """From /lists, or from a feature page's box with that feature (model, sae, feature) as its first entry."""
    first = (model, sae, feature) if model and sae and feature is not None else None
    list_id = service.new_list(session, who=who, title=title, description=description, first=first)
    if first is not None and request.headers.get("HX-Request") == "true":
        return add_box(request, model, sae, feature, session, who, added=list_id)
    return redirect(request, f"/lists/{list_id}")


@router.get("/lists/{list_id}", response_class=HTMLResponse)
def show_list(request: Request, list_id: ListId, session: SessionDep, settings: SettingsDep, who: CallerDep,
              format: Annotated[Literal["html", "json", "csv"], Query()] = "html") -> Response:
    view = service.list_view(session, list_id=list_id, who=who)
    if format != "html":
        return export(view, format)
    return render(request, "list.html", {"list": view, "max_title": MAX_TITLE, "max_note": MAX_NOTE,
                                         "model_slug": settings.served_slug()})


@router.post("/lists/{list_id}")
def change_list(request: Request, list_id: ListId, session: SessionDep, who: OwnerDep,
                action: Annotated[str, Form(pattern="^(rename|delete)$")],
                title: Annotated[str, Form(max_length=MAX_TITLE)] = "",
                description: Annotated[str, Form(max_length=MAX_NOTE)] = "") -> Response:
    service.change_list(session, list_id=list_id, who=who, action=action, title=title, description=description)
    return redirect(request, "/lists" if action == "delete" else f"/lists/{list_id}")


@router.post("/lists/{list_id}/features")
def add_feature(request: Request, list_id: ListId, session: SessionDep, who: OwnerDep,
                model: Annotated[str, Form(max_length=64)], sae: Annotated[str, Form(max_length=64)],
                feature: Annotated[int, Form(ge=0, le=2**31 - 1)],
                note: Annotated[str, Form(max_length=MAX_NOTE)] = "") -> Response:
    """A list's page: add a feature by its id."""
    service.add_feature(session, list_id=list_id, who=who, model_slug=model, sae_id=sae, feature=feature, note=note)
    return redirect(request, f"/lists/{list_id}")


@router.post("/lists/{list_id}/features/{entry_id}")
def change_entry(request: Request, list_id: ListId, entry_id: Annotated[int, Path(ge=0, le=2**31 - 1)],
                 session: SessionDep, who: OwnerDep, action: Annotated[str, Form(pattern="^(note|remove)$")],
                 note: Annotated[str, Form(max_length=MAX_NOTE)] = "") -> Response:
    service.change_entry(session, list_id=list_id, entry_id=entry_id, who=who, action=action, note=note)
    return redirect(request, f"/lists/{list_id}")


@router.get("/{model}/{sae_id}/{feature}/lists", response_class=HTMLResponse)
def add_box(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep, who: CallerDep,
            added: Annotated[str | None, Query(max_length=16)] = None) -> Response:
    """The feature page's "add to a list" box (a fragment it loads): the caller's lists, or how to sign in."""
    ctx = service.add_form(session, who=who, model_slug=model, sae_id=sae_id, feature=feature)
    return render(request, "list_add.html", {**ctx, "model_slug": model, "sae_id": sae_id, "feature": feature,
                                             "added": added, "max_title": MAX_TITLE, "max_note": MAX_NOTE})


@router.post("/{model}/{sae_id}/{feature}/lists", response_class=HTMLResponse)
def add_from_feature(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep,
                     who: OwnerDep, list_id: Annotated[str, Form(alias="list", pattern=r"^[A-Za-z0-9_-]{1,16}$")],
                     note: Annotated[str, Form(max_length=MAX_NOTE)] = "") -> Response:
    """The box's "add": the box again (HTMX), or back to the feature's page."""
    service.add_feature(session, list_id=list_id, who=who, model_slug=model, sae_id=sae_id, feature=feature,
                        note=note)
    if request.headers.get("HX-Request") == "true":
        return add_box(request, model, sae_id, feature, session, who, added=list_id)
    return redirect(request, f"/{model}/{sae_id}/{feature}")
