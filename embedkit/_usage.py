"""What a server says about usage and limits: `Answer`, `RateLimits`, and their parsing.

Hosted APIs limit by tokens, and say how much is left before any 429: OpenAI sends
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go-style durations (`1s`,
`17ms`, `6m0s`); Azure OpenAI sends only the `remaining` pair, and on a token 429 maybe
`x-rate-limit-reset-tokens` instead of `Retry-After`; `-1` and `0` have been seen in them
(facts: /work/shared/HOSTED.md, "Rate limits and their headers"). Token counts come back
too: `usage.prompt_tokens` in OpenAI-compatible bodies, `x-compute-tokens` from TEI.

This module only *parses*: it sits beside `_errors` at the bottom of the package, so both
the HTTP backend (which reads the headers and bodies) and the core (which paces by them)
can use its types. The seam: a backend that can read these reports each answer as an
`Answer` to the callback it was given (`CompleteBackend.listen`); the scheduler keeps the
books and hands it to the `Quota` (`Quota.on_answer`).

Parsing is defensive: a value that is not a finite number (or duration), a negative
`remaining`/`reset`, or a `limit` of 0 or less is ignored, never an error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

__all__ = [
    "Answer",
    "RateLimits",
    "parse_duration",
    "rate_limits_from",
    "reported_tokens",
    "retry_after_from_message",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}
#: "tokens per min (TPM): Limit 1000000, Used 976163, Requested 70716" (OpenAI's token 429)
_TPM_MESSAGE = re.compile(r"tokens per min[a-z]*\s*\(TPM\):\s*Limit\s+(\d+)", re.IGNORECASE)
_RPM_MESSAGE = re.compile(r"requests per min[a-z]*\s*\(RPM\):\s*Limit\s+(\d+)", re.IGNORECASE)
#: "Please try again in 2.812s" / "in 20ms" / "in 6m0s"
_TRY_AGAIN = re.compile(r"try again in\s+([0-9hmsuµn.]+)", re.IGNORECASE)


def parse_duration(raw: str | None) -> float | None:
    """Seconds from a Go-style duration (`1s`, `17ms`, `6m0s`, `1h2m3.5s`) or a plain number.

    None for anything else, a negative value, or a non-finite one.
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                return None
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or pos == 0:
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _number(raw: str | None, *, positive: bool = False) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class RateLimits:
    """What the server said is allowed and left, per minute (None: not said, or unusable).

    Attributes:
        limit_requests: requests a minute (`x-ratelimit-limit-requests`).
        remaining_requests: requests left now.
        reset_requests: seconds until the request allowance is full again.
        limit_tokens: tokens a minute (`x-ratelimit-limit-tokens`, or the TPM of a 429).
        remaining_tokens: tokens left now.
        reset_tokens: seconds until the token allowance is full again.
    """

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None

    def empty(self) -> bool:
        """True when the server said nothing usable."""
        return all(v is None for v in dataclasses.astuple(self))


_NOTHING = RateLimits()


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if value is not None:
            return value
    return None


def rate_limits_from(headers: Mapping[str, str], message: str = "") -> RateLimits | None:
    """The rate limits an answer states, from its headers (and a 429's message); None: none.

    `headers` must answer `.get` for lower-case names (httpx.Headers, or a dict of
    lower-case names).
    """
    reset_tokens_raw = _header(headers, "x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens")
    limits = RateLimits(
        limit_requests=_number(headers.get("x-ratelimit-limit-requests"), positive=True),
        remaining_requests=_number(headers.get("x-ratelimit-remaining-requests")),
        reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_number(headers.get("x-ratelimit-limit-tokens"), positive=True),
        remaining_tokens=_number(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens=parse_duration(reset_tokens_raw),
    )
    if message:
        tpm = _TPM_MESSAGE.search(message)
        rpm = _RPM_MESSAGE.search(message)
        again = _TRY_AGAIN.search(message)
        wait = parse_duration(again.group(1).rstrip(".")) if again else None
        if tpm and limits.limit_tokens is None:
            limits = dataclasses.replace(limits, limit_tokens=float(tpm.group(1)) or None)
            if wait is not None and limits.reset_tokens is None:
                limits = dataclasses.replace(limits, reset_tokens=wait)
        if rpm and limits.limit_requests is None:
            limits = dataclasses.replace(limits, limit_requests=float(rpm.group(1)) or None)
    return None if limits == _NOTHING else limits


def retry_after_from_message(message: str) -> float | None:
    """The wait in "Please try again in 2.812s" (OpenAI's 429 text), when it is there."""
    again = _TRY_AGAIN.search(message)
    return parse_duration(again.group(1).rstrip(".")) if again else None


def reported_tokens(headers: Mapping[str, str]) -> int | None:
    """TEI's `x-compute-tokens`: the tokens the server computed for this request."""
    value = _number(headers.get("x-compute-tokens"))
    return int(value) if value is not None else None


@dataclasses.dataclass(slots=True)
class Answer:
    """One answer (or refusal) as a backend reports it to the scheduler, beside the matrix.

    Attributes:
        texts: texts in the request.
        chars: their characters, summed (to learn tokens per character).
        tokens: tokens the server said it counted (`usage.prompt_tokens`,
            `x-compute-tokens`); None when it did not say.
        limits: the rate limits it stated; None when it stated none.
        status: the HTTP status (200 for a success).
        endpoint: the server (URL without credentials or query), for per-endpoint counts.
        estimated: the scheduler's own count of the request's tokens (filled in by the
            scheduler before the quota hears of it; 0 from a backend).

    Not frozen: the scheduler sets `estimated` in place (one record per answer, on the hot
    path; `dataclasses.replace` cost ~10 µs an answer).
    """

    texts: int
    chars: int
    tokens: int | None = None
    limits: RateLimits | None = None
    status: int = 200
    endpoint: str = ""
    estimated: int = 0

    @property
    def spent(self) -> int:
        """The tokens this request cost: the server's count, else the scheduler's."""
        return self.tokens if self.tokens is not None else self.estimated
