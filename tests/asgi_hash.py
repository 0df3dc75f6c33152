"""A TEI-style embedding app in plain ASGI, for running under uvicorn and hypercorn.

`POST /embed` answers `tests.fakes.vector_for(text)` for every input (so a test computes the
expected matrix on its own); `GET /info` and `GET /health` answer as TEI does. Every answer
carries `x-http-version`, the protocol the server spoke, so a test can tell HTTP/2 happened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .fakes import vector_for

DIM = 16
_INFO = orjson.dumps({"model_id": "hash-model", "max_client_batch_size": 256})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI entry point: `python -m uvicorn tests.asgi_hash:app`."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status, payload = 200, b"{}"
    if scope["path"] == "/info":
        payload = _INFO
    elif scope["path"] == "/embed" and scope["method"] == "POST":
        texts = orjson.loads(body)["inputs"]
        rows = np.stack([vector_for(text, DIM) for text in texts])
        payload = orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)
    elif scope["path"] != "/health":
        status, payload = 404, b'{"error": "no such route", "error_type": "NotFound"}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-http-version", scope["http_version"].encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
