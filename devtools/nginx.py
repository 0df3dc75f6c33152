"""nginx from a temp-dir config, on 127.0.0.1, stopped by PID: for tests and benchmarks.

`running_nginx(d, http_body, port)` writes `d/nginx.conf` (no daemon, one worker, pid, logs
and temp paths inside `d`; `user` set when running as root), starts nginx in its own process
group, waits for `port` to accept connections, and stops it when the block ends. The caller
gives what goes inside `http { ... }`: upstreams and servers.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .processes import stop_process_group

__all__ = ["NGINX", "nginx_path", "running_nginx", "upstream_conf"]

NGINX = os.environ.get("EMBEDKIT_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"

_PRELUDE = """
daemon off;
worker_processes 1;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{body}
}}
"""


def nginx_path() -> str | None:
    """The nginx binary, or None when it is not installed."""
    return NGINX if os.path.exists(NGINX) else None


def upstream_conf(name: str, servers: list[str], port: int, *, method: str = "") -> str:
    """An `upstream` over `servers` ("127.0.0.1:PORT") with keep-alive, proxied on `port`.

    `method` is "" (round-robin, nginx's default) or "least_conn". As nginx does by default,
    a POST is not passed on to the next server once it was sent (`proxy_next_upstream`).
    """
    lines = [f"    upstream {name} {{"]
    if method:
        lines.append(f"        {method};")
    lines += [f"        server {s} max_fails=1 fail_timeout=2s;" for s in servers]
    lines += ["        keepalive 64;", "    }"]
    lines += [
        "    server {",
        f"        listen 127.0.0.1:{port};",
        "        client_max_body_size 64m;",
        "        location / {",
        f"            proxy_pass http://{name};",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";',
        "        }",
        "    }",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def running_nginx(d: Path, http_body: str, ports: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    """Run nginx with `http_body` inside `http { }` until the block ends (stopped by PID)."""
    binary = nginx_path()
    if binary is None:
        raise FileNotFoundError(f"nginx not found at {NGINX}")
    d.mkdir(parents=True, exist_ok=True)
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    conf = d / "nginx.conf"
    conf.write_text(_PRELUDE.format(d=d, user=user, body=http_body))
    log = d / "error.log"
    process = subprocess.Popen(
        [binary, "-p", str(d), "-e", str(log), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for port in ports:
            _wait_for_port(port, process, log)
        yield process
    finally:
        stop_process_group(process)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"nginx exited early:\n{text}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling a process we do not control
    raise RuntimeError(f"nginx: port {port} not open after 30 s")
