"""The chat-model client interface that explainers and scorers call, and its HTTP implementation for any
OpenAI-compatible chat-completions server (vLLM, llama.cpp, Ollama, `saex llm serve`); knows nothing of SAEs,
features or prompts, and nothing of torch (the embedded model lives in local_llm.py)."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

MAX_RETRY_AFTER_S = 60.0  # a server asking us to wait longer than this is treated as down, not busy


@dataclass
class TokenLogprob:
    token: str  # the generated token, decoded
    logprob: float  # natural log of its probability
    top: dict[str, float]  # the most likely tokens at this position (the generated one among them) -> logprob


@dataclass
class Completion:
    text: str
    logprobs: list[TokenLogprob] | None  # None when not asked for, or when the server does not return them
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" (end of turn) or "length" (max_tokens reached)


class LLMError(RuntimeError):
    """A request the server refused or that could not be completed; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BudgetExhausted(LLMError):
    """The client's per-run request budget is spent; nothing more is sent."""


class LLMClient(Protocol):
    name: str  # the model's name; explanations store it as method "llm:<name>"

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
                   top_logprobs: int = 0) -> Completion: ...

    async def aclose(self) -> None: ...


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500].strip() or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:500]


def parse_logprobs(choice: dict[str, Any]) -> list[TokenLogprob] | None:
    """choices[i].logprobs.content of an OpenAI chat completion, or None when the server sent none."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    out = []
    for item in content:
        top: dict[str, float] = {}
        for alt in item.get("top_logprobs") or []:
            # two ids can decode to the same string (broken UTF-8 pieces): keep the likelier
            top[alt["token"]] = max(float(alt["logprob"]), top.get(alt["token"], float("-inf")))
        out.append(TokenLogprob(token=item["token"], logprob=float(item["logprob"]), top=top))
    return out


class OpenAIChatClient:
    """POSTs to {base_url}/chat/completions with at most max_in_flight requests at once; connection errors, 429 and
    5xx are retried with exponential backoff and jitter (Retry-After honoured), other 4xx raise LLMError at once.
    Every request sent, retries included, counts against budget_requests."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, max_in_flight: int = 4,
                 retries: int = 4, backoff_s: float = 0.5, budget_requests: int | None = None,
                 timeout_s: float = 120, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.name = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.retries = retries
        self.backoff_s = backoff_s
        self.budget_requests = budget_requests
        self.requests_made = 0  # HTTP requests sent, retries included
        self.prompt_tokens = 0  # usage the server reported, over all successful calls
        self.completion_tokens = 0
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests replace it to record delays
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers, transport=transport)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = _retry_after(response)
            if after is not None:
                if after > MAX_RETRY_AFTER_S:
                    raise LLMError(f"{self.url} asks to retry after {after:.0f} s (more than "
                                   f"{MAX_RETRY_AFTER_S:.0f} s): {_error_text(response)}", response.status_code)
                return after
        return self.backoff_s * 2**attempt * (0.5 + random.random())  # jitter: concurrent retries spread out

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if self.budget_requests is not None and self.requests_made >= self.budget_requests:
                raise BudgetExhausted(f"request budget of {self.budget_requests} spent ({self.requests_made} "
                                      "requests made); raise it to go on")
            self.requests_made += 1
            response = None
            try:
                response = await self._http.post(self.url, json=body)
            except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise LLMError(f"{self.url} answered {response.status_code} with a body that is not JSON: "
                                       f"{response.text[:200]!r}", response.status_code) from exc
                last = f"{response.status_code}: {_error_text(response)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise LLMError(f"{self.url} refused the request ({last})", response.status_code)
            if attempt < self.retries:
                await self._sleep(self._delay(attempt, response))
        raise LLMError(f"{self.url} failed after {self.retries + 1} attempts (last: {last})",
                       response.status_code if response is not None else None)

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
                   top_logprobs: int = 0) -> Completion:
        body: dict[str, Any] = {"model": self.name, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature}
        if top_logprobs > 0:
            body |= {"logprobs": True, "top_logprobs": top_logprobs}
        async with self._semaphore:
            data = await self._post(body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMError(f"{self.url} answered without choices[0].message: {str(data)[:300]}") from exc
        usage = data.get("usage") or {}
        completion = Completion(text=text, logprobs=parse_logprobs(choice) if top_logprobs > 0 else None,
                                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage.get("completion_tokens") or 0),
                                finish_reason=choice.get("finish_reason") or "stop")
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        return completion

    async def aclose(self) -> None:
        await self._http.aclose()
