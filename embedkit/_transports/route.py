"""Which way requests travel, and the TLS settings every way shares.

embedkit's own HTTP/1.1 transport (`FastTransport`) carries requests unless something it
does not do is needed; then httpx's stock transport (httpcore) carries them instead:

* a proxy applies to the URL, read exactly as httpx reads proxies (``HTTP_PROXY``,
  ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, and the macOS / Windows system
  settings through `urllib.request.getproxies`);
* ``http2=True`` was asked for (httpx with h2: one TLS connection, many requests
  multiplexed).

Both ways get the same `ssl.SSLContext`, built from httpx-style ``verify=`` and
``cert=`` arguments, and the same trust store httpx uses by default (certifi, or
``SSL_CERT_FILE`` / ``SSL_CERT_DIR``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator

import httpx

from .._config import CertTypes, VerifyTypes
from .decoding import decode_limited, encodings_of
from .parser import ResponseTooLarge
from .transport import FastTransport

__all__ = [
    "build_client",
    "proxy_applies",
    "send_limited",
    "ssl_context",
]

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def ssl_context(verify: VerifyTypes = True, cert: CertTypes | None = None) -> ssl.SSLContext:
    """The TLS settings httpx would build from ``verify`` and ``cert``.

    Built here rather than by httpx because httpx 0.28 deprecates passing a path or a
    client certificate to it; the result is the same context.
    """
    if isinstance(verify, ssl.SSLContext):
        context = verify
    elif isinstance(verify, bool):
        context = httpx.create_ssl_context(verify=verify)
    elif isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        if os.path.isdir(path):
            context = ssl.create_default_context(capath=path)
        else:
            context = ssl.create_default_context(cafile=path)
    else:
        raise TypeError(
            f"verify must be a bool, a CA bundle path or an ssl.SSLContext, "
            f"not {type(verify).__name__}"
        )
    if cert is not None:
        if isinstance(cert, str):
            context.load_cert_chain(cert)
        else:
            context.load_cert_chain(*cert)
    return context


def proxy_applies(url: httpx.URL) -> bool:
    """Whether httpx (with its default ``trust_env=True``) would send ``url`` via a proxy."""
    try:
        from httpx._utils import URLPattern, get_environment_proxies
    except ImportError:  # pragma: no cover - httpx moved its helpers: be conservative
        return any(os.environ.get(name) for name in _PROXY_VARS)
    patterns = sorted(
        ((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()),
        key=lambda item: item[0],
    )
    for pattern, proxy in patterns:  # most specific first, as httpx matches its mounts
        if pattern.matches(url):
            return proxy is not None
    return False


def build_client(
    url: httpx.URL,
    *,
    transport: httpx.AsyncBaseTransport | None,
    timeout: httpx.Timeout | float | None,
    max_connections: int,
    verify: VerifyTypes = True,
    cert: CertTypes | None = None,
    http2: bool = False,
    max_response_size: int | None = None,
) -> tuple[httpx.AsyncClient, FastTransport | None]:
    """The client embedkit builds, and the `FastTransport` under it if it has one.

    With the client and transport both embedkit's, the backend sends straight to the
    transport (`FastTransport.send_prepared`, with the request head built once):
    httpx's client layer (auth, cookies, redirects, hooks) costs ~115 µs a request, and
    its Request/Response models ~25 µs more, and they do nothing here. A user-supplied
    transport goes through the client.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    custom_tls = verify is not True or cert is not None
    if transport is None and (http2 or proxy_applies(url)):
        stock = httpx.AsyncClient(
            verify=ssl_context(verify, cert) if custom_tls else True,
            http2=http2,
            timeout=timeout,
            limits=limits,
        )
        return stock, None
    direct = None
    if transport is None:
        transport = direct = FastTransport(
            max_connections=max_connections,
            ssl_context=ssl_context(verify, cert) if custom_tls else None,
            max_response_size=max_response_size,
        )
    elif isinstance(transport, FastTransport):
        direct = transport
    return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits), direct


async def send_limited(
    client: httpx.AsyncClient, request: httpx.Request, limit: int
) -> tuple[httpx.Response, bytes]:
    """Send through ``client``; the response (closed) and its body, Content-Encoding undone.

    The body may be at most ``limit`` bytes as received and again once decoded, else
    `ResponseTooLarge`: the size limit for routes other than `FastTransport`. httpx would
    decode all of it at once, unbounded; here it is read raw and decoded a piece at a time
    (`decode_limited`).
    """
    response = await client.send(request, stream=True)
    try:
        parts = [chunk async for chunk in _Limited(response.stream, limit)]
    finally:
        await response.aclose()
    body = b"".join(parts)
    return response, decode_limited(body, encodings_of(response.headers), limit)


class _Limited(httpx.AsyncByteStream):
    """A response stream that refuses to run past ``limit`` bytes (as received)."""

    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._inner, httpx.AsyncByteStream)
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._limit:
                raise ResponseTooLarge(
                    f"Response body over the limit of {self._limit} bytes (max_response_size)"
                )
            yield chunk

    async def aclose(self) -> None:
        if isinstance(self._inner, httpx.AsyncByteStream):
            await self._inner.aclose()
