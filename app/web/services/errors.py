"""What services raise for the routes to answer: NotFound (404, a page or a JSON detail) and Invalid (422); knows
nothing of HTTP."""

from __future__ import annotations


class NotFound(LookupError):
    pass


class Invalid(ValueError):
    pass
