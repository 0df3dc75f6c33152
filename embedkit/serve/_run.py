"""Running the app: `run(...)` for the CLI, `main()` for `python -m embedkit.serve`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence

from .._backends import cached_snapshot, check_installed, is_packaged
from ._app import DEFAULT_MAX_BODY_BYTES, create_app

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "build_parser",
    "check_model",
    "is_loopback",
    "main",
    "run",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Read for the API key when none is passed (a key on the command line shows in `ps`).
API_KEY_ENV = "EMBEDKIT_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return False
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def run(
    model: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    device: str | None = None,
    max_client_batch_size: int = 32,
    max_batch_size: int = 32,
    max_concurrent_requests: int = 512,
    auto_truncate: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve `model` over HTTP with uvicorn until interrupted (blocking).

    Speaks the HF Inference API (`POST /models/{any}`), TEI (`POST /embed`, `GET /info`,
    `GET /health`) and OpenAI (`POST /v1/embeddings`). The model loads in the background:
    `/health` answers 503 until it is ready, then 200. Binding to an address other than
    loopback is allowed, with a warning on stderr. See `create_app` for the other arguments.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            f'embedkit serve needs the serve extra: pip install "embedkit[serve,local]" ({exc})'
        ) from exc
    check_model(model)
    if not is_loopback(host):
        print(
            f"WARNING: embedkit serve is listening on {host}:{port}, which other machines can "
            "reach. "
            + (
                "Requests need the API key."
                if api_key
                else "There is no API key: anyone who can reach it can use it "
                f"(--api-key or ${API_KEY_ENV})."
            ),
            file=sys.stderr,
            flush=True,
        )
    _configure_logging(log_level)
    app = create_app(
        model,
        api_key=api_key,
        device=device,
        max_client_batch_size=max_client_batch_size,
        max_batch_size=max_batch_size,
        max_concurrent_requests=max_concurrent_requests,
        auto_truncate=auto_truncate,
        max_body_bytes=max_body_bytes,
    )
    shown = "[::1]" if host == "::1" else host
    print(
        f"embedkit serve: {app.state.engine.model_id} at http://{shown}:{port} "
        "(HF: POST /models/<any>, TEI: POST /embed, OpenAI: POST /v1/embeddings; "
        "GET /health is 200 once the model is loaded)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


def check_model(model: str | None) -> None:
    """Fail before binding when the model cannot be loaded: a missing extra or folder."""
    check_installed(model)
    if not is_packaged(model) and model is not None and not os.path.isdir(model):
        cached_snapshot(model)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("embedkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m embedkit.serve` (and `embedkit serve`)."""
    parser = argparse.ArgumentParser(
        prog="embedkit serve",
        description=(
            "Serve a local sentence-transformers model over HTTP, speaking the HF Inference "
            "API, TEI and OpenAI /v1/embeddings."
        ),
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a sentence-transformers model folder, or a model id in the local HF cache "
        "(default: the packaged sentence-transformers/all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)",
    )
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument(
        "--max-client-batch-size",
        type=int,
        default=32,
        help="texts per request at most (default 32)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="texts per model call (default 32)"
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=512,
        help="texts in flight before answering 429 (default 512)",
    )
    parser.add_argument(
        "--no-auto-truncate",
        dest="auto_truncate",
        action="store_false",
        help="refuse (422) inputs longer than the model reads, unless a request asks to truncate",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m embedkit.serve [--model M] [--host H] [--port P] [--api-key K] ...`."""
    args = build_parser().parse_args(argv)
    try:
        check_model(args.model)
    except (ImportError, ValueError) as exc:
        raise SystemExit(f"embedkit serve: {exc}") from exc
    run(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        device=args.device,
        max_client_batch_size=args.max_client_batch_size,
        max_batch_size=args.max_batch_size,
        max_concurrent_requests=args.max_concurrent_requests,
        auto_truncate=args.auto_truncate,
        log_level=args.log_level,
        access_log=args.access_log,
    )
