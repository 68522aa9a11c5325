"""Who a saved result (a permalink) counts against and the limits on it, from the request and settings: an API key
or signed-in browser counts as its key, anyone else as a hash of their address; knows nothing of torch."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Request

from app.store.results import SaveLimits
from app.web.auth import CallerDep
from app.web.deps import SettingsDep


async def save_limits(request: Request, settings: SettingsDep, who: CallerDep) -> SaveLimits:
    if who is not None:
        return SaveLimits(owner=f"key:{who.id}", per_day=settings.saves_per_day_per_key,
                          max_bytes=settings.saved_result_max_bytes)
    address = request.client.host if request.client else "unknown"  # uvicorn's: forwarded only from trusted proxies
    return SaveLimits(owner="ip:" + hashlib.sha256(address.encode()).hexdigest()[:32],
                      per_day=settings.saves_per_day_per_address, max_bytes=settings.saved_result_max_bytes)


SaveLimitsDep = Annotated[SaveLimits, Depends(save_limits)]
