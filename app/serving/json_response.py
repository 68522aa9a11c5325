"""JSON responses built from plain dicts whose fields are already the contract's: serialised once with orjson,
with no second validation of a large nested body; shared by the worker and the web app, knows nothing of torch."""

from __future__ import annotations

import math

import orjson
from fastapi.responses import JSONResponse, Response


def finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def json_bytes(content) -> bytes:
    # orjson writes NaN and Infinity as null, and the contract allows neither: refuse them. Walking a large
    # body costs ten times the dump, so walk only when the output holds a null at all (rare: null fields)
    body = orjson.dumps(content)
    if b"null" in body and not finite(content):
        raise ValueError("a result held a non-finite number")
    return body


class FastJSON(JSONResponse):
    def render(self, content) -> bytes:
        return json_bytes(content)


class JSONBytes(Response):
    """A body already serialised with json_bytes."""

    media_type = "application/json"
