"""Feature hover cards (/{model}/{sae}/{feature}/card): a feature's explanation, density, max activation and top
logits as a small fragment that pages load on hover or focus of a feature id (a whole page when opened directly);
knows nothing of torch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from app.web.deps import SessionDep
from app.web.pages.render import render
from app.web.services import explorer as service

router = APIRouter(include_in_schema=False)
Feature = Annotated[int, Path(ge=0, le=2**31 - 1)]


@router.get("/{model}/{sae_id}/{feature}/card", response_class=HTMLResponse)
def feature_card(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep) -> Response:
    ctx = service.feature_card(session=session, model_slug=model, sae_id=sae_id, feature=feature)
    return render(request, "feature_card.html", ctx, headers={"Cache-Control": "private, max-age=60",
                                                              "Vary": "HX-Request"})
