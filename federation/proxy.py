"""The coordinator's reverse proxy: nginx terminates TLS on the public address and passes only the Fleet API."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from federation.errors import CoordinatorError

__all__ = ["FLEET_PATH", "NGINX", "nginx_command", "nginx_executable", "write_nginx_config"]

#: Debian's nginx (``apt-get install nginx-light``); ``BIOVERSE_NGINX`` names another.
NGINX = "/usr/sbin/nginx"
#: The SuperLink's Fleet API routes (``flwr.superlink.routers.fleet``): all ``POST /v1/fleet/<verb>``.
FLEET_PATH = "/v1/fleet/"


def nginx_executable() -> str:
    """nginx's path; a one-line error when it is not installed."""
    candidate = os.environ.get("BIOVERSE_NGINX") or (NGINX if Path(NGINX).exists() else shutil.which("nginx"))
    if not candidate or not Path(candidate).exists():
        raise CoordinatorError("nginx is not installed: apt-get install nginx-light (or set BIOVERSE_NGINX to its path)")
    return candidate


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_nginx_config(run_dir: Path, *, listen_host: str, listen_port: int, superlink_port: int,
                       cert: Path, key: Path, ca_cert: Path) -> Path:
    """Write ``nginx.conf`` (and its pid, log and temp folders) under ``run_dir/nginx``.

    The server terminates TLS with the coordinator's certificate and proxies
    ``POST /v1/fleet/<verb>`` (nginx's normalised path, passed on as matched) to the SuperLink
    on loopback, verifying it against the federation's CA. Every other path (Control,
    Runtime, health, docs) and every other method gets 403 from nginx itself.
    """
    root = (run_dir / "nginx").resolve()
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = f"""# Written by bioverse coordinator start; regenerated at every start.
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server_tokens off;
    client_max_body_size 512m;
    server {{
        listen {_listen(listen_host, listen_port)} ssl;
        ssl_certificate {cert.resolve()};
        ssl_certificate_key {key.resolve()};
        ssl_protocols TLSv1.2 TLSv1.3;
        location ~ ^{FLEET_PATH}[a-z0-9-]+$ {{
            limit_except POST {{ deny all; }}
            proxy_pass https://127.0.0.1:{superlink_port}$uri;
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {ca_cert.resolve()};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
        location / {{ return 403; }}
    }}
}}
"""
    path = root / "nginx.conf"
    path.write_text(config)
    return path


def nginx_command(config_path: Path) -> list[str]:
    """nginx in the foreground with only this config (its own prefix: no system file read or written)."""
    root = config_path.parent
    return [nginx_executable(), "-p", f"{root}/", "-c", str(config_path), "-e", str(root / "error.log")]
