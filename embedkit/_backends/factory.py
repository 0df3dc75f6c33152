"""The one place that turns an embedder's settings into a backend.

`api` picks the family: `"local"` runs a model in this process; `"hf"`, `"tei"`,
`"openai"`, `"cohere"`, `"voyage"`, `"gemini"` and `"ollama"` build a wire protocol and an
`HttpBackend` per URL, and several URLs become one
`BalancedBackend` over them. A ready `backend=` object is used as it is (completed with the
neutral defaults when it has only the essential methods).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._auth import resolve_token
from .._config import Connection, Limits
from .balancer import BalancedBackend
from .base import Backend, CompleteBackend, complete
from .http import HttpBackend
from .protocols import PROTOCOLS, OpenAIProtocol, Options
from .replica import Endpoint, Replica

__all__ = ["URLs", "build_backend", "endpoints_of"]

#: One URL, one `Endpoint`, or several of either (replicas of one model, same protocol).
URLs = str | Endpoint | Sequence[str | Endpoint]


def endpoints_of(url: URLs | None) -> list[Endpoint]:
    """`url=` as a list of endpoints: [] for None (the protocol's default URL)."""
    if url is None:
        return []
    if isinstance(url, (str, Endpoint)):
        items: list[str | Endpoint] = [url]
    elif isinstance(url, Sequence):
        items = list(url)
        if not items:
            raise ValueError("url= got an empty list; give at least one URL")
    else:
        raise TypeError(
            f"url= takes a URL, an Endpoint or a list of them, not {type(url).__name__}"
        )
    endpoints = []
    for item in items:
        if isinstance(item, str):
            endpoints.append(Endpoint(item))
        elif isinstance(item, Endpoint):
            endpoints.append(item)
        else:
            raise TypeError(
                f"url= items must be URL strings or Endpoints, not {type(item).__name__}"
            )
    seen = [e.url for e in endpoints]
    if len(set(seen)) != len(seen):
        raise ValueError("url= names the same URL twice")
    return endpoints


def build_backend(
    *,
    api: str,
    model: str | None,
    url: URLs | None,
    token: str | None,
    options: Options,
    limits: Limits,
    connection: Connection,
    device: str | None,
    backend: Backend | None,
) -> tuple[CompleteBackend, int]:
    """The backend an embedder sends through, and its total concurrency cap.

    The cap is `limits.max_concurrency`, or one `Endpoint`'s own, or the sum of the
    replicas' caps with several URLs.
    """
    if backend is not None:
        return complete(backend), limits.max_concurrency
    if api == "local":
        for name, value in (
            ("url", url),
            ("token", token),
            ("connection.http_client", connection.http_client),
        ):
            if value is not None:
                raise ValueError(
                    f"api='local' runs the model in this process; {name}= does not apply"
                )
        if connection.encoding_format != "base64":
            raise ValueError("api='local' returns arrays directly; encoding_format= does not apply")
        from .local import LocalBackend  # the optional [local] extra

        return LocalBackend(model, options=options, device=device), limits.max_concurrency
    if api not in PROTOCOLS:
        known = ", ".join(repr(name) for name in [*PROTOCOLS, "local"])
        raise ValueError(f"api must be one of {known}, not {api!r}")

    def http_backend(endpoint_url: str | None, endpoint_token: str | None, cap: int) -> HttpBackend:
        if api == "openai":
            protocol: Any = OpenAIProtocol(
                model=model,
                url=endpoint_url,
                options=options,
                encoding_format=connection.encoding_format,
            )
        else:
            protocol = PROTOCOLS[api](model=model, url=endpoint_url, options=options)
        return HttpBackend(
            protocol,
            token=resolve_token(api, endpoint_token),
            client=connection.http_client,
            transport=connection.transport,
            timeout=connection.timeout,
            max_connections=max(cap * 2, 16),
            wait_for_model=connection.wait_for_model,
            use_cache=connection.use_cache,
            verify=connection.verify,
            cert=connection.cert,
            http2=connection.http2,
            max_response_size=connection.max_response_size,
            warm=connection.warm,
        )

    endpoints = endpoints_of(url)
    if len(endpoints) <= 1:
        one = endpoints[0] if endpoints else None
        cap = limits.max_concurrency
        if one is not None and one.max_concurrency is not None:
            cap = one.max_concurrency
        own_token = one.token if one is not None and one.token is not None else token
        return http_backend(one.url if one else None, own_token, cap), cap
    replicas = []
    for endpoint in endpoints:
        cap = endpoint.max_concurrency or limits.max_concurrency
        replica = http_backend(
            endpoint.url, endpoint.token if endpoint.token is not None else token, cap
        )
        replicas.append(
            Replica(
                replica,
                name=replica.describe().split(" ", 1)[1],
                probe=replica.probe,
                max_concurrency=cap,
                weight=endpoint.weight,
                adaptive=limits.adaptive_concurrency,
            )
        )
    return BalancedBackend(replicas), sum(r.concurrency.maximum for r in replicas)
