"""The exceptions embedkit raises, and the one place where HTTP answers become them.

The tree:

* EmbedkitError - the base; catch this to catch everything embedkit raises.
  * ClientClosedError - the embedder was closed (or never opened) when it was asked to work.
  * CorpusError - `embed_file`: the input or output cannot be used as asked (in `_corpus.py`).
  * TransportError - no usable answer arrived: connection refused or cut, timeouts.
  * DeadlineExceededError - a call ran out of its time (`deadline=`, `Limits.max_queue_wait`);
    also a built-in `TimeoutError`.
  * StatusError - the server answered with an error status. Carries `status_code`,
    `message` (the server's own words), `request_id`, `retry_after`.
    * AuthenticationError - 401, 403.
    * ModelNotFoundError - 404.
    * InputError - 400, 413, 422: the server refused the input.
      * BatchTooLargeError - the batch was too big (TEI's "batch size N > maximum allowed
        batch size M", 413 payload too large); embedkit splits the batch and resends it.
      * TokenLimitError - too many tokens, in the request (OpenAI's `max_tokens_per_request`,
        Mistral's "Too many tokens in batch") or in one input ("maximum context length is
        N tokens"); embedkit lowers its token budget and splits, or names the input.
    * RateLimitError - 429.
    * ModelLoadingError - 503 while the model is loading (`estimated_time` when given).
    * ServerError - other 5xx, 424 and 408: the server failed, maybe for a moment.
  * ResponseError - a 2xx answer whose body is malformed or inconsistent with the request.

Caller mistakes (a non-str text, None, an empty string, a lone surrogate, a zero timeout)
are the built-in `TypeError` and `ValueError`, raised before anything is sent.

No exception message ever holds a token: messages are built from status codes and server
bodies, never from request headers.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ._usage import parse_duration, retry_after_from_message

__all__ = [
    "AuthenticationError",
    "BatchTooLargeError",
    "ClientClosedError",
    "DeadlineExceededError",
    "EmbedkitError",
    "InputError",
    "ModelLoadingError",
    "ModelNotFoundError",
    "RateLimitError",
    "ResponseError",
    "ServerError",
    "StatusError",
    "TokenLimitError",
    "TransportError",
    "error_from_response",
    "parse_retry_after",
]

_MAX_MESSAGE = 500


class EmbedkitError(Exception):
    """Base class of every error embedkit raises."""


class ClientClosedError(EmbedkitError):
    """The embedder is closed, or was never opened with `async with`/`with`."""


class TransportError(EmbedkitError):
    """The request got no usable answer: connect failure, timeout, connection cut mid-body."""


class DeadlineExceededError(EmbedkitError, TimeoutError):
    """A call ran out of time: its `deadline=` passed, or its texts waited in the client's
    queue longer than `Limits.max_queue_wait`. Also a `TimeoutError`, so
    `except TimeoutError` catches it. Other callers sharing its batches are not affected."""


class ResponseError(EmbedkitError):
    """A successful status with a body that is malformed or does not match the request."""


class StatusError(EmbedkitError):
    """The server answered with an error status.

    Attributes:
        status_code: the HTTP status.
        message: the server's own message (from its JSON error body, a header, or the text).
        request_id: the server's request id (`x-request-id`), when it sent one.
        retry_after: seconds the server asked us to wait (Retry-After, retry-after-ms,
            estimated_time), when it said.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        text = f"{status_code}: {message}" if message else str(status_code)
        if request_id:
            text += f" (request id {request_id})"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_status_error,
            (type(self), self.status_code, self.message, self.request_id, self.retry_after),
        )


def _rebuild_status_error(
    cls: type[StatusError],
    status_code: int,
    message: str,
    request_id: str | None,
    retry_after: float | None,
) -> StatusError:
    return cls(status_code, message, request_id=request_id, retry_after=retry_after)


class AuthenticationError(StatusError):
    """401 or 403: the token is missing, wrong, or not allowed to use this model."""


class ModelNotFoundError(StatusError):
    """404: no such model or route at this URL."""


class InputError(StatusError):
    """400, 413 or 422: the server refused the input (too long, empty, malformed)."""


class BatchTooLargeError(InputError):
    """The server refused the batch for its size; embedkit splits it and tries again.

    Attributes:
        max_batch_size: the largest batch the server said it accepts, when it said.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__(status_code, message, request_id=request_id, retry_after=retry_after)
        self.max_batch_size = max_batch_size

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_batch_error,
            (self.status_code, self.message, self.request_id, self.max_batch_size),
        )


def _rebuild_batch_error(
    status_code: int, message: str, request_id: str | None, max_batch_size: int | None
) -> BatchTooLargeError:
    return BatchTooLargeError(
        status_code, message, request_id=request_id, max_batch_size=max_batch_size
    )


class TokenLimitError(InputError):
    """Too many tokens: in one request (`scope="request"`) or in one input (`"input"`).

    Raised from a server's 400/413/422 that names a token limit, and by embedkit itself
    before sending an input longer than `max_tokens_per_input` (`on_overflow="error"`;
    then `status_code` is 0 and `position` names the input).

    Attributes:
        scope: "request" (the sum over a batch) or "input" (one text).
        limit: the limit the server (or `Limits`) set, when said.
        requested: the tokens it counted (or embedkit estimated), when said.
        position: the input's index in the call, when embedkit refused it itself.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        scope: str = "request",
        limit: int | None = None,
        requested: int | None = None,
        position: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(status_code, message, request_id=request_id)
        self.scope = scope
        self.limit = limit
        self.requested = requested
        self.position = position

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_token_error,
            (
                self.status_code,
                self.message,
                self.scope,
                self.limit,
                self.requested,
                self.position,
                self.request_id,
            ),
        )


def _rebuild_token_error(
    status_code: int,
    message: str,
    scope: str,
    limit: int | None,
    requested: int | None,
    position: int | None,
    request_id: str | None,
) -> TokenLimitError:
    return TokenLimitError(
        status_code,
        message,
        scope=scope,
        limit=limit,
        requested=requested,
        position=position,
        request_id=request_id,
    )


class RateLimitError(StatusError):
    """429: too many requests; `retry_after` says how long the server asked us to wait."""


class ModelLoadingError(StatusError):
    """503 while the model loads; `retry_after` carries the server's `estimated_time`."""


class ServerError(StatusError):
    """5xx (other than loading), 424 or 408: the server failed to answer this time."""


_BATCH_SIZE_RE = re.compile(r"maximum allowed batch size (\d+)", re.IGNORECASE)
# Token limits, as the servers word them (sources in docs/guides/tokens.md):
# OpenAI "max_tokens_per_request: Requested 346134 tokens, max 300000"
_REQUEST_TOKENS_RE = re.compile(r"requested\s+(\d+)\s+tokens,?\s+max\s+(\d+)", re.IGNORECASE)
# Mistral "Too many tokens in batch. Max is 16384"
_BATCH_TOKENS_RE = re.compile(r"too many tokens in batch\.?\s+max is\s+(\d+)", re.IGNORECASE)
# OpenAI and vLLM "This model's maximum context length is 512 tokens. However, you
# requested 1451 tokens in the input for embedding generation."
_CONTEXT_RE = re.compile(
    r"maximum context length is\s+(\d+)\s+tokens.*?requested\s+(\d+)\s+tokens",
    re.IGNORECASE | re.DOTALL,
)
# TEI "`inputs` must have less than 512 tokens. Given: 1451"
_TEI_INPUT_RE = re.compile(r"must have less than\s+(\d+)\s+tokens\.?\s+given:\s*(\d+)", re.I)
_TAG_RE = re.compile(r"<[^>]+>")
_SPACE_RE = re.compile(r"\s+")


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (delay-seconds or HTTP-date)."""
    ms = headers.get("retry-after-ms") or headers.get("x-ms-retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds)


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _message_from_json(data: Any) -> str | None:
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        parts = [m for m in (_message_from_json(x) for x in data) if m]
        return "; ".join(parts) if parts else None
    if not isinstance(data, dict):
        return None
    for key in ("error", "message", "detail", "msg"):
        if key in data:
            found = _message_from_json(data[key])
            if found:
                return found
    return None


def _server_message(body: bytes, headers: Mapping[str, str]) -> tuple[str, Any]:
    """The server's words and the parsed JSON body (or None)."""
    parsed: Any = None
    message: str | None = None
    if body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if parsed is not None:
            message = _message_from_json(parsed)
        if message is None and parsed is None:
            text = body[:4096].decode("utf-8", "replace")
            if "<" in text and ">" in text:
                text = _TAG_RE.sub(" ", text)
            message = _SPACE_RE.sub(" ", text).strip() or None
    if message is None:
        message = headers.get("x-error-message")
    return _clip(message or ""), parsed


def error_from_response(status_code: int, body: bytes, headers: Mapping[str, str]) -> StatusError:
    """Build the exception for an error answer. `headers` must be case-insensitive."""
    message, parsed = _server_message(body, headers)
    request_id = headers.get("x-request-id") or headers.get("request-id")
    error_type = ""
    if isinstance(parsed, dict):
        raw_type = parsed.get("error_type") or parsed.get("type")
        if isinstance(raw_type, str):
            error_type = raw_type.lower()
    lowered = message.lower()
    retry_after = parse_retry_after(headers)

    if status_code in (401, 403):
        return AuthenticationError(status_code, message, request_id=request_id)
    if status_code == 404:
        return ModelNotFoundError(status_code, message, request_id=request_id)
    if status_code in (400, 413, 422):
        token_error = _token_limit(status_code, message, parsed, request_id)
        if token_error is not None:
            return token_error
    if status_code == 413 or (
        status_code in (400, 422) and "batch size" in lowered and "maximum" in lowered
    ):
        match = _BATCH_SIZE_RE.search(message)
        return BatchTooLargeError(
            status_code,
            message or "request too large",
            request_id=request_id,
            max_batch_size=int(match.group(1)) if match else None,
        )
    if status_code in (400, 422):
        return InputError(status_code, message, request_id=request_id)
    if status_code == 429:
        if retry_after is None:
            retry_after = _retry_after_429(headers, message)
        return RateLimitError(status_code, message, request_id=request_id, retry_after=retry_after)
    if status_code == 503 and (
        "loading" in lowered or (isinstance(parsed, dict) and "estimated_time" in parsed)
    ):
        estimated = parsed.get("estimated_time") if isinstance(parsed, dict) else None
        wait = float(estimated) if isinstance(estimated, (int, float)) else retry_after
        return ModelLoadingError(status_code, message, request_id=request_id, retry_after=wait)
    if status_code == 503 and error_type == "overloaded":
        return RateLimitError(status_code, message, request_id=request_id, retry_after=retry_after)
    if status_code >= 500 or status_code in (408, 424):
        return ServerError(status_code, message, request_id=request_id, retry_after=retry_after)
    return StatusError(status_code, message, request_id=request_id, retry_after=retry_after)


def _token_limit(
    status_code: int, message: str, parsed: Any, request_id: str | None
) -> TokenLimitError | None:
    """The `TokenLimitError` a 400/413/422 stands for, when it names a token limit."""
    code = ""
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        raw = (inner if isinstance(inner, dict) else parsed).get("code")
        code = raw if isinstance(raw, str) else ""
    found = _REQUEST_TOKENS_RE.search(message)
    if found is not None or code == "max_tokens_per_request":
        return TokenLimitError(
            status_code,
            message,
            scope="request",
            limit=int(found.group(2)) if found else None,
            requested=int(found.group(1)) if found else None,
            request_id=request_id,
        )
    found = _BATCH_TOKENS_RE.search(message)
    if found is not None:
        return TokenLimitError(
            status_code, message, scope="request", limit=int(found.group(1)), request_id=request_id
        )
    found = _CONTEXT_RE.search(message) or _TEI_INPUT_RE.search(message)
    if found is not None:
        return TokenLimitError(
            status_code,
            message,
            scope="input",
            limit=int(found.group(1)),
            requested=int(found.group(2)),
            request_id=request_id,
        )
    return None


def _retry_after_429(headers: Mapping[str, str], message: str) -> float | None:
    """A 429's wait when it sent no Retry-After: Azure's reset header, or OpenAI's text."""
    # (OpenAI's x-ratelimit-reset-tokens is the time until the allowance is *full* again:
    # far longer than needed, so it is not taken as a wait.)
    reset = parse_duration(headers.get("x-rate-limit-reset-tokens"))
    if reset is not None and reset > 0:
        return reset
    return retry_after_from_message(message)
