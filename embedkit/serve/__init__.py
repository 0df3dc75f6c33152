"""`embedkit serve`: a local model behind the HF Inference API, TEI, OpenAI, Ollama (`/api/embed`)
and Cohere (`/v2/embed`) protocols.

    python -m embedkit.serve --port 8080          # or: embedkit serve --port 8080

An optional extra (`pip install "embedkit[serve,local]"`): the core client never imports it.
Concurrent requests are batched server-side by embedkit's own scheduler.
"""

from __future__ import annotations

from ._app import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from ._app import create_app as create_app
from ._run import API_KEY_ENV as API_KEY_ENV
from ._run import DEFAULT_HOST as DEFAULT_HOST
from ._run import DEFAULT_PORT as DEFAULT_PORT
from ._run import build_parser as build_parser
from ._run import is_loopback as is_loopback
from ._run import main as main
from ._run import run as run

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "build_parser",
    "create_app",
    "is_loopback",
    "main",
    "run",
]
