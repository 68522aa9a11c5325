"""Control characters in what clients send: NUL and the other C0 controls (but tab, newline and carriage return),
DEL and the C1 controls are refused (422) before anything reaches a database, which may not store them (Postgres
refuses NUL in text) or a log; in plain text, in a JSON body (as its \\u escapes) and in a URL-encoded form or query
string (as %XX). Knows nothing of torch, storage or the app's routes."""

from __future__ import annotations

import re

ALLOWED = "\t\n\r"
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# in JSON, a control character can only be a \u escape (raw ones are invalid JSON): \u0000-\u001f but \u0009, \u000a,
# \u000d, and \u007f-\u009f; preceded by an even number of backslashes (else the backslash itself is escaped)
JSON_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u00(?:0[0-8bcefBCEF]|1[0-9a-fA-F]|7[fF]|[89][0-9a-fA-F])")
# URL-encoded: %00-%1F but %09, %0A, %0D, and %7F; C1 controls as UTF-8 (%C2%80-%C2%9F)
PERCENT = re.compile(rb"%(?:0[0-8bcefBCEF]|1[0-9a-fA-F]|7[fF])|%[cC]2%[89][0-9a-fA-F]")
RAW = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]")


def control_characters(text: str) -> bool:
    """Whether text holds a control character other than tab, newline and carriage return."""
    return CONTROL.search(text) is not None


def encoded_control_characters(data: bytes, content_type: str = "") -> bool:
    """Whether a request body or a query string (bytes as sent) carries a control character, raw, as a JSON \\u
    escape or percent-encoded."""
    if RAW.search(data) is not None or PERCENT.search(data) is not None:
        return True
    return b"\\u" in data and JSON_ESCAPE.search(data) is not None
