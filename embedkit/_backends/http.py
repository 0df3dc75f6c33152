"""The HTTP backend: a wire protocol, an httpx client, a token, and error translation.

This is the one boundary where httpx exceptions and error statuses become embedkit's
exceptions (`raise ... from exc`), so nothing above it handles httpx types.

It is also where the server's word on usage is read: once the embedder has called
`listen(on_answer)`, every answer (success or refusal) is reported as an
`embedkit._usage.Answer` (the tokens the server counted, from `usage.prompt_tokens` or
`x-compute-tokens`, and its `x-ratelimit-*` headers), beside the matrix `embed_batch`
returns. The callback runs synchronously before `embed_batch` returns or raises. Until
`listen` is called, the fast path does not even look at a success's headers.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Mapping

import anyio
import httpx
import orjson
from anyio.abc import TaskStatus

from .._auth import Secret
from .._config import (
    DEFAULT_MAX_RESPONSE_SIZE,
    DEFAULT_TIMEOUT,
    CertTypes,
    Kind,
    Matrix,
    VerifyTypes,
)
from .._errors import (
    EmbedkitError,
    ModelLoadingError,
    ResponseError,
    StatusError,
    TransportError,
    error_from_response,
)
from .._transports import (
    FastTransport,
    PreparedPost,
    ResponseTooLarge,
    build_client,
    decode_limited,
    encodings_of,
    send_limited,
)
from .._usage import Answer, rate_limits_from
from .._version import __version__ as _version
from .base import BackendStats, fit_to_info
from .protocols import BackendInfo, WireProtocol

__all__ = ["DEFAULT_MAX_RESPONSE_SIZE", "DEFAULT_TIMEOUT", "HttpBackend"]


_USER_AGENT = f"embedkit/{_version} python-httpx/{httpx.__version__}"
#: The headers of an answer whose headers nobody reads (a success on the fast path).
_NO_HEADERS: Mapping[str, str] = httpx.Headers()
_Answer = tuple[int, bytes, Mapping[str, str]]


def _reported_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The `x-...` headers of a raw answer, by lower-case name (what `Answer` reads)."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in raw
        if name[:2] in (b"x-", b"X-")
    }


def _safe_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urllib.parse.urlunsplit(parts._replace(query=""))


class HttpBackend:
    """Sends batches to an embedding server over HTTP.

    Args:
        protocol: the wire format (hf, tei, openai).
        token: sent as the protocol says (`Authorization: Bearer ...`; Gemini's
            `x-goog-api-key`) when set.
        client: an `httpx.AsyncClient` to use (the caller keeps ownership).
        transport: an httpx transport for the client embedkit builds (tests pass
            `httpx.MockTransport`); default: embedkit's lean HTTP/1.1 transport, or
            httpx's own when a proxy applies or `http2` is set (see `_route.py`).
        timeout: httpx timeout for the client embedkit builds.
        max_connections: connection pool size for the client embedkit builds.
        verify, cert: TLS settings for the client embedkit builds, as httpx takes them.
        http2: send over httpx's stock transport with HTTP/2 (needs `h2`).
        max_response_size: a larger response body (bytes as received, and again once its
            Content-Encoding is undone) is a `ResponseError`.
        wait_for_model: force `x-wait-for-model` on (True) or off (False); by default it is
            turned on after the first 503 "loading" (HF's advice).
        use_cache: False sends `x-use-cache: false` (HF's server-side result cache).
        headers: extra headers for every request.
    """

    def __init__(
        self,
        protocol: WireProtocol,
        *,
        token: Secret | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        max_connections: int = 64,
        wait_for_model: bool | None = None,
        use_cache: bool | None = None,
        headers: dict[str, str] | None = None,
        verify: VerifyTypes = True,
        cert: CertTypes | None = None,
        http2: bool = False,
        max_response_size: int | None = DEFAULT_MAX_RESPONSE_SIZE,
        warm: bool = False,
    ) -> None:
        self.protocol = protocol
        self._warm = warm
        self._warm_to = 0  # connections to open after the first answer (fit_concurrency)
        self._answered: anyio.Event | None = None  # set by the first answer, while run() waits
        self._token = token
        self._url = httpx.URL(protocol.endpoint)
        if self._url.userinfo:
            # httpx would send it as Basic auth on some routes and not on others (and it
            # would clash with the bearer token): refused, so behaviour never depends on
            # the route. The message does not repeat the URL, which holds a secret.
            raise ValueError(
                "credentials in the URL (user:password@) are not supported; pass token=, "
                "or connection=embedkit.Connection(http_client=httpx.AsyncClient(auth=...))"
            )
        if (client is not None or transport is not None) and (
            verify is not True or cert is not None or http2
        ):
            raise ValueError(
                "Connection's verify=, cert= and http2= configure the client embedkit builds; "
                "set them on your own http_client or transport instead"
            )
        self._owns_client = client is None
        self._max_response_size = max_response_size
        self._direct: FastTransport | None = None
        self._prepared: PreparedPost | None = None
        if client is None:
            client, self._direct = build_client(
                self._url,
                transport=transport,
                timeout=timeout,
                max_connections=max_connections,
                verify=verify,
                cert=cert,
                http2=http2,
                max_response_size=max_response_size,
            )
        self._client = client
        self._info = BackendInfo()
        self._timeout = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._timeouts = self._timeout["timeout"]
        self._forced_wait = wait_for_model
        self.wait_for_model = bool(wait_for_model)
        self._base_headers: dict[str, str] = {
            "content-type": "application/json",
            "accept": "application/json",
        }
        if headers:
            self._base_headers.update(headers)
        if protocol.hf_headers and use_cache is False:
            self._base_headers["x-use-cache"] = "false"
        if token is not None:
            self._base_headers.update(protocol.auth_headers(token.reveal()))
        self._headers = self._build_headers()
        self._on_answer: Callable[[Answer], None] | None = None
        self._where = _safe_url(protocol.endpoint)

    def listen(self, on_answer: Callable[[Answer], None]) -> None:
        """Report every answer's usage and rate limits to `on_answer` (see the module doc)."""
        self._on_answer = on_answer

    def _report(
        self,
        texts: list[str],
        status: int,
        headers: Mapping[str, str],
        tokens: int | None = None,
        message: str = "",
    ) -> None:
        on_answer = self._on_answer
        if on_answer is None:
            return
        on_answer(
            Answer(
                texts=len(texts),
                chars=sum(map(len, texts)),
                tokens=tokens,
                # no header and no message: nothing to parse (a dict of the x- headers
                # on the fast path is empty when the server sent none)
                limits=rate_limits_from(headers, message) if headers or message else None,
                status=status,
                endpoint=self._where,
            )
        )

    def _build_headers(self) -> dict[str, str]:
        headers = dict(self._base_headers)
        if self.protocol.hf_headers and self.wait_for_model:
            headers["x-wait-for-model"] = "true"
        self._direct_headers = httpx.Headers(
            {"accept-encoding": "gzip, deflate", "user-agent": _USER_AGENT, **headers}
        )
        if self._direct is not None:
            # The bytes httpx.Request would serialize, built once (None: headers that set
            # their own framing or hold CR/LF take the httpx.Request path, which says so).
            self._prepared = PreparedPost.build(self._url, self._direct_headers)
        return headers

    @property
    def carries_kind(self) -> bool:
        """Whether the protocol has a query/document field (a call may name its kind)."""
        return self.protocol.carries_kind

    @property
    def resent_requests(self) -> int:
        """Requests embedkit's transport re-sent because the server had closed a reused
        connection before reading them (never counted as the retry policy's retries)."""
        return self._direct.resent_requests if self._direct is not None else 0

    async def _post(self, body: bytes) -> _Answer:
        """Status, body (Content-Encoding undone) and headers of the answer to a POST.

        `max_response_size` bounds the body as received and again once decoded, on every
        route (`decode_limited`: a compression bomb stops at the limit).
        """
        direct = self._direct
        limit = self._max_response_size
        if direct is not None:
            prepared = self._prepared
            if prepared is not None:
                raw = await direct.send_prepared(prepared, body, self._timeouts)
                if raw.status < 300 and not raw.encoded:
                    if self._on_answer is not None:
                        return raw.status, raw.content, _reported_headers(raw.headers)
                    return raw.status, raw.content, _NO_HEADERS
                headers = httpx.Headers(raw.headers)
                content = raw.content
                if raw.encoded:
                    content = decode_limited(content, encodings_of(headers), limit)
                return raw.status, content, headers
            request = httpx.Request(
                "POST",
                self._url,
                headers=self._direct_headers,
                content=body,
                extensions=self._timeout,
            )
            response = await direct.handle_async_request(request)
            received = b"".join([chunk async for chunk in response.aiter_raw()])
            content = decode_limited(received, encodings_of(response.headers), limit)
            return response.status_code, content, response.headers
        if limit is None:
            response = await self._client.post(self._url, content=body, headers=self._headers)
            return response.status_code, response.content, response.headers
        request = self._client.build_request("POST", self._url, content=body, headers=self._headers)
        response, content = await send_limited(self._client, request, limit)
        return response.status_code, content, response.headers

    async def start(self) -> BackendInfo:
        """Ask the server for its limits (TEI `/info`); other protocols learn nothing."""
        self._info = await self.protocol.discover(self._client, self._headers)
        return self._info

    def fit_concurrency(self, max_batch_size: int, max_concurrency: int) -> int:
        """At most `max_concurrency`, and within the inputs in flight TEI's `/info` allows.
        With `warm`, that many connections open after the first answer (`run`)."""
        fitted = fit_to_info(self._info, max_batch_size, max_concurrency)
        self._warm_to = fitted if self._warm else 0
        return fitted

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """With `warm` (and embedkit's own transport): once the first answer has shown the
        server is there, open connections up to the concurrency limit, so the next burst's
        requests all leave at once instead of each waiting for a handshake. A connect that
        fails changes nothing: requests open their own connections as before."""
        if not self._warm_to or self._direct is None:
            task_status.started()
            return
        self._answered = answered = anyio.Event()
        task_status.started()
        await answered.wait()
        with contextlib.suppress(httpx.HTTPError, OSError):
            await self.warm(self._warm_to)

    def backend_stats(self) -> BackendStats:
        """Requests the transport re-sent on a connection the server had closed."""
        return BackendStats(resent_requests=self.resent_requests)

    async def warm(self, connections: int) -> None:
        """Open `connections` keep-alive connections to the server now (embedkit's own
        transport; with httpx's transport or a client of the caller's, nothing happens:
        httpx has no public way to open a connection without a request)."""
        if self._direct is not None:
            connect = self._timeout["timeout"].get("connect")
            await self._direct.warm(self._url, connections, connect_timeout=connect)

    async def probe(self) -> None:
        """Check that the server answers: TEI `GET /health`, others a one-text request.

        Raises the embedkit error the server's answer (or silence) maps to.
        """
        root = getattr(self.protocol, "root", None)
        if self.protocol.name != "tei" or root is None:
            await self.embed_batch(["embedkit health probe"])
            return
        try:
            response = await self._client.get(root + "/health", headers=self._headers)
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__} probing {_safe_url(root)}/health") from exc
        if response.status_code >= 400:
            raise self._redact(
                error_from_response(response.status_code, response.content, response.headers)
            )

    async def tokenize(self, texts: list[str]) -> list[int]:
        """Each text's tokens as TEI counts them (`POST /tokenize`, special tokens in, the
        embedder's `prompt_name` applied as `/embed` would). TEI only."""
        root = getattr(self.protocol, "root", None)
        if self.protocol.name != "tei" or root is None:
            raise ValueError("counting tokens on the server needs api='tei' (its /tokenize)")
        body: dict[str, object] = {"inputs": texts, "add_special_tokens": True}
        prompt_name = getattr(self.protocol.options, "prompt_name", None)
        if prompt_name:
            body["prompt_name"] = prompt_name
        try:
            response = await self._client.post(
                root + "/tokenize", content=orjson.dumps(body), headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__} from {_safe_url(root)}/tokenize") from exc
        if response.status_code >= 400:
            raise self._redact(
                error_from_response(response.status_code, response.content, response.headers)
            )
        try:
            tokens = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            tokens = None
        if not (
            isinstance(tokens, list)
            and len(tokens) == len(texts)
            and all(isinstance(t, list) for t in tokens)
        ):
            raise ResponseError(f"{_safe_url(root)}/tokenize: not one token list per input")
        return [len(t) for t in tokens]

    async def embed_batch(self, texts: list[str], *, kind: Kind | None = None) -> Matrix:
        """POST one batch and decode it, or raise the matching embedkit error.

        `kind` overrides the protocol's default intent for this batch ("query"/"document").
        """
        try:
            status, content, headers = await self._post(self.protocol.body(texts, kind))
        except ResponseTooLarge as exc:
            raise ResponseError(f"{exc} from {_safe_url(self.protocol.endpoint)}") from exc
        except httpx.TimeoutException as exc:
            raise TransportError(
                f"{type(exc).__name__} talking to {_safe_url(self.protocol.endpoint)}"
            ) from exc
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            raise TransportError(
                f"{type(exc).__name__} talking to {_safe_url(self.protocol.endpoint)}: {detail}"
            ) from exc
        if 300 <= status < 400:
            raise self._redirected(status, headers)
        if status >= 400:
            error = self.protocol.refine_error(
                error_from_response(status, content, headers), content
            )
            if self._on_answer is not None:
                self._report(texts, status, headers, message=error.message)
            if (
                isinstance(error, ModelLoadingError)
                and self._forced_wait is None
                and not self.wait_for_model
            ):
                # HF's advice: ask the server to hold requests only once a model is known cold.
                self.wait_for_model = True
                self._headers = self._build_headers()
            raise self._redact(error)
        answered = self._answered
        if answered is not None:  # the first answer: run() opens the other connections
            self._answered = None
            answered.set()
        try:
            if self._on_answer is None:
                return self.protocol.finish(self.protocol.decode(content, len(texts)))
            matrix, tokens = self.protocol.decode_counted(content, len(texts), headers)
            matrix = self.protocol.finish(matrix)
        except EmbedkitError as exc:
            raise self._redact(exc) from exc.__cause__
        self._report(texts, status, headers, tokens)
        return matrix

    def _redirected(self, status: int, headers: Mapping[str, str]) -> StatusError:
        """A redirect is not followed (it could carry the token to another origin): a
        `StatusError` naming the status and where it points (without credentials or query)."""
        location = headers.get("location")
        if location:
            target = _safe_url(urllib.parse.urljoin(self.protocol.endpoint, location))
            where = f"to {target}"
        else:
            where = "without a Location"
        return StatusError(
            status,
            f"the server redirected {where}; embedkit does not follow redirects (the "
            "request carries your token): set url= to the address the server names",
            request_id=headers.get("x-request-id"),
        )

    def _redact(self, exc: EmbedkitError) -> EmbedkitError:
        """Blank out the token where a server quoted it back (some gateways do)."""
        secret = self._token.reveal() if self._token is not None else ""
        if secret and secret in str(exc):
            exc.args = tuple(
                a.replace(secret, "********") if isinstance(a, str) else a for a in exc.args
            )
            if isinstance(exc, StatusError):
                exc.message = exc.message.replace(secret, "********")
        return exc

    async def aclose(self) -> None:
        """Close the httpx client if embedkit built it."""
        if self._owns_client:
            await self._client.aclose()

    def describe(self) -> str:
        """Protocol and URL (without credentials or query)."""
        return f"{self.protocol.name} {_safe_url(self.protocol.endpoint)}"
