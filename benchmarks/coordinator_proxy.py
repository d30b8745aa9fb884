"""The coordinator's reverse proxy: latency of a Fleet API request through nginx against the SuperLink dialled directly.

Starts a real coordinator (``bioverse coordinator`` folder in a temporary directory: SuperLink on
loopback with TLS, node auth and a database; nginx on another loopback port) and times
``POST /v1/fleet/push-object`` with bodies of model-update sizes over one keep-alive TLS
connection each way. The SuperLink reads the whole body and refuses it (unsigned, not a
protobuf), so the time is transport: TLS, nginx's re-encryption to the SuperLink, upload.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from _results import machine, table, write_section
from federation.coordinator_service import running_coordinator
from federation.coordinator_setup import init_coordinator
from federation.processes import free_port


def _median_ms(client: httpx.Client, url: str, body: bytes, repeats: int) -> float:
    headers = {"content-type": "application/protobuf"}
    client.post(url, content=body, headers=headers)  # connection and TLS handshake outside the timing
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        status = client.post(url, content=body, headers=headers).status_code
        times.append(time.perf_counter() - started)
        if status in (403, 404, 502, 504):
            raise SystemExit(f"{url}: HTTP {status}, the request did not reach the SuperLink")
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bioverse-bench-coordinator-"))
    config = init_coordinator(work / "coord", f"127.0.0.1:{free_port()}", superlink_port=free_port())
    rows = []
    with running_coordinator(config), httpx.Client(verify=str(config.ca_cert), timeout=60) as client:
        for label, size in (("1 KB", 1 << 10), ("1 MB", 1 << 20), ("8 MB", 8 << 20)):
            body = os.urandom(size)
            direct = _median_ms(client, f"https://{config.superlink_address}/v1/fleet/push-object", body, args.repeats)
            proxied = _median_ms(client, f"https://{config.public_address}/v1/fleet/push-object", body, args.repeats)
            rows.append([label, f"{direct:.1f} ms", f"{proxied:.1f} ms", f"{proxied / direct:.2f}x", f"{proxied - direct:+.1f} ms"])
    body = (
        "## Coordinator proxy (`benchmarks/coordinator_proxy.py`)\n\n"
        f"{machine()}; median of {args.repeats} `POST /v1/fleet/push-object` per size, one keep-alive TLS "
        "connection each; baseline: the SuperLink on loopback dialled directly (TLS), same run.\n\n"
        + table(["body", "direct to SuperLink", "through nginx", "ratio", "added"], rows)
    )
    print(body)
    write_section("coordinator-proxy", body)


if __name__ == "__main__":
    main()
