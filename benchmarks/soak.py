"""Soak: the platform API's prediction route held at 80% of its measured maximum for --minutes.

Phase 1 finds the maximum (closed loop, N concurrent clients, a few levels); phase 2 sends an
open-loop, constant-arrival load at --share of it over many twins, recording every interval the
requests, errors, p50/p99, the API process tree's RSS and open files, and the database size.
Latency is counted from each request's scheduled send time (no coordinated omission).

Usage: python benchmarks/soak.py [--minutes 10] [--twins 20000] [--share 0.8] [--fresh-seconds 30]
Prints a table and rewrites the ``soak`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from api_predictions import cpu_seconds, prepare, serve

from _results import machine, table, write_section
from federation.processes import free_port

HOT_TWINS, HOT_SHARE = 100, 0.2  # a fifth of the requests go to 100 twins (re-scored patients), the rest uniform
# the API's SQLite pool (platform_api/db.py: pool_size 20) opens connections as threads need them, 2 fds each
# (database and WAL): up to 40 more open files that are not a leak
POOL_FDS = 40
WARM_UP_SECONDS = 5.0
READING = ("Open files grow only while the SQLite pool opens its connections (2 each, database and WAL, seen in "
           "/proc/PID/fd). The fresh process row separates the process's aging from the data's growth: a fresh "
           "process on the grown database costing as much CPU per request as the aged one means the rise is the "
           "data's (every prediction and its audit event are kept: random-key indexes grow), not a leak.")  # of closed-loop load on a new API process (model load, first queries), not counted


@dataclass
class Interval:
    """What one recording interval of the soak saw."""

    start: float
    sent: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # ms from scheduled send to answer
    statuses: dict[str, int] = field(default_factory=dict)
    rss_mb: float = 0.0
    fds: int = 0
    db_mb: float = 0.0
    load: float = 0.0
    cpu_s: float = 0.0  # the API process tree's CPU time (user + system) at the end of the interval
    cpu_us: float = 0.0  # its CPU time in the interval per request scheduled in it
    client_us: float = 0.0  # the load generator's (this process's) CPU time in the interval per request


class Target:
    """The API under load: its URL, key, twins and process tree."""

    def __init__(self, port: int, token: str, ids: list[str], pid: int, db: Path, seed: int = 7) -> None:
        self.port, self.token, self.ids = port, token, ids
        self.process, self.db, self.random = psutil.Process(pid), db, random.Random(seed)
        self.hot = ids[:HOT_TWINS]

    def twin(self) -> str:
        return self.random.choice(self.hot if self.random.random() < HOT_SHARE else self.ids)

    def tree(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def sample(self, interval: Interval) -> None:
        """Fill the resource columns of ``interval`` (RSS and fds summed over the process tree)."""
        tree = self.tree()
        interval.rss_mb = sum(p.memory_info().rss for p in tree) / 2**20
        interval.fds = sum(p.num_fds() for p in tree)
        interval.db_mb = sum(f.stat().st_size for f in self.db.parent.glob(self.db.name + "*")) / 2**20
        interval.load = os.getloadavg()[0]
        interval.cpu_s = sum(cpu_seconds(p) for p in tree)


class Connections:
    """Keep-alive HTTP/1.1 connections to the API over raw asyncio streams: far less client CPU per
    request than httpx, which matters when the load generator shares two cores with the server."""

    def __init__(self, port: int, size: int, timeout: float = 30.0) -> None:
        self.port, self.size, self.timeout, self.opened = port, size, timeout, 0
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.free.empty() and self.opened < self.size:
            self.opened += 1
            try:
                return await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.opened -= 1
                raise
        return await self.free.get()

    async def _post(self, request: bytes) -> int:
        reader, writer = await self._take()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
        except BaseException:
            writer.close()
            self.opened -= 1
            raise
        self.free.put_nowait((reader, writer))
        return int(head[9:12])

    async def post(self, path: str, token: str) -> str:
        """POST ``path`` with no body; the status code, or the transport error's name."""
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
        try:
            return str(await asyncio.wait_for(self._post(request), self.timeout))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as err:
            return type(err).__name__

    async def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait()[1].close()


async def request(pool: Connections, target: Target, interval: Interval, due: float) -> None:
    status = await pool.post(f"/v1/twins/{target.twin()}/predictions", target.token)
    interval.latencies.append((time.perf_counter() - due) * 1e3)
    interval.statuses[status] = interval.statuses.get(status, 0) + 1
    interval.errors += not status.startswith("2")


async def closed_loop(target: Target, clients: int, seconds: float) -> Interval:
    """``clients`` workers each sending the next request when the last is answered."""
    interval = Interval(start=time.perf_counter())
    end = interval.start + seconds
    pool = Connections(target.port, clients)

    async def worker() -> None:
        while time.perf_counter() < end:
            interval.sent += 1
            await request(pool, target, interval, time.perf_counter())
    await asyncio.gather(*(worker() for _ in range(clients)))
    await pool.close()
    interval.load = time.perf_counter() - interval.start  # elapsed, for the rate
    return interval


async def find_maximum(target: Target, levels: list[int], seconds: float) -> tuple[float, list[list[str]]]:
    """The best throughput (answered 2xx per second) over the closed-loop levels, and a row per level
    (after a warm-up at the first level that is not counted)."""
    await closed_loop(target, levels[0], WARM_UP_SECONDS)
    rows, best = [], 0.0
    for clients in levels:
        run = await closed_loop(target, clients, seconds)
        rate = (len(run.latencies) - run.errors) / run.load
        best = max(best, rate)
        rows.append([str(clients), f"{rate:.0f}", f"{np.percentile(run.latencies, 50):.1f}",
                     f"{np.percentile(run.latencies, 99):.1f}", str(run.errors)])
        print(f"closed loop, {clients} clients: {rate:.0f} req/s, {run.errors} errors", file=sys.stderr)
    return best, rows


async def open_loop(target: Target, rate: float, seconds: float, every: float, connections: int) -> list[Interval]:
    """Constant arrivals at ``rate`` per second for ``seconds``; an Interval per ``every`` seconds
    (requests count in the interval they were scheduled in)."""
    intervals: list[Interval] = []
    pending: set[asyncio.Task[None]] = set()
    pool = Connections(target.port, connections)
    cpu = (sum(cpu_seconds(p) for p in target.tree()), time.process_time())
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        if not intervals or due >= intervals[-1].start + every:
            if intervals:
                cpu = measure(target, intervals[-1], cpu)
                print(" | ".join(row(len(intervals) - 1, intervals[-1], every)), file=sys.stderr)
            intervals.append(Interval(start=start + len(intervals) * every))
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        intervals[-1].sent += 1
        task = asyncio.create_task(request(pool, target, intervals[-1], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)  # each ends within the pool's timeout
    await pool.close()
    measure(target, intervals[-1], cpu)
    return intervals


def measure(target: Target, interval: Interval, before: tuple[float, float]) -> tuple[float, float]:
    """Sample the resources at the end of ``interval``; returns the CPU seconds so far of the API's
    process tree and of this process."""
    target.sample(interval)
    client = time.process_time()
    interval.cpu_us = (interval.cpu_s - before[0]) / max(interval.sent, 1) * 1e6
    interval.client_us = (client - before[1]) / max(interval.sent, 1) * 1e6
    return interval.cpu_s, client


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def row(index: int, interval: Interval, every: float) -> list[str]:
    return [f"{(index + 1) * every:.0f}", str(interval.sent), f"{interval.sent / every:.0f}", str(interval.errors),
            f"{pct(interval.latencies, 50):.1f}", f"{pct(interval.latencies, 99):.1f}", f"{interval.cpu_us:.0f}", f"{interval.rss_mb:.0f}",
            str(interval.fds), f"{interval.db_mb:.1f}", f"{interval.load:.1f}"]


def cpu_per_request(intervals: list[Interval]) -> float:
    return sum(i.cpu_us * i.sent for i in intervals) / max(sum(i.sent for i in intervals), 1)


def verdict(intervals: list[Interval], every: float, rate: float, fresh: list[Interval]) -> tuple[list[list[str]], bool]:
    """Start against end (the first minute, a third of a short run, is the baseline of the last): errors,
    RSS, open files, p99, server CPU per request, throughput; and whether every aim is met."""
    window = max(1, round(60 / every)) if len(intervals) * every >= 180 else max(1, len(intervals) // 3)
    first, last = intervals[:window], intervals[-window:]
    p99_first, p99_last = (pct([v for i in part for v in i.latencies], 99) for part in (first, last))
    cpu_first, cpu_last = cpu_per_request(first), cpu_per_request(last)
    statuses: dict[str, int] = {}
    for interval in intervals:
        for status, count in interval.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    errors, sent = sum(i.errors for i in intervals), sum(i.sent for i in intervals)
    rss0, rss1 = first[-1].rss_mb, intervals[-1].rss_mb
    growth = (rss1 / rss0 - 1) * 100
    fds_first, fds_last = max(i.fds for i in first), max(i.fds for i in last)
    achieved = sum(len(i.latencies) - i.errors for i in intervals) / (len(intervals) * every)
    span = f"{window * every:.0f} s"
    met = {"errors": errors == 0, "rss": growth < 10, "fds": fds_last <= fds_first + POOL_FDS,
           "p99": p99_last < 1.5 * p99_first, "cpu": cpu_last < 1.2 * cpu_first, "rate": achieved >= 0.99 * rate}
    rows = [["errors (non-2xx or transport)", f"{errors} of {sent} ({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))})",
             "0", met["errors"]],
            [f"RSS at the end of the first {span} -> end (MB)", f"{rss0:.0f} -> {rss1:.0f} ({growth:+.1f}%)", "< +10%", met["rss"]],
            [f"open files, most in the first {span} -> last {span}", f"{fds_first} -> {fds_last}",
             f"bounded (<= +{POOL_FDS}: the SQLite pool filling)", met["fds"]],
            [f"p99 first {span} -> last {span} (ms)", f"{p99_first:.1f} -> {p99_last:.1f} ({p99_last / p99_first:.2f}x)",
             "flat (< 1.5x)", met["p99"]],
            [f"server CPU us per request, first {span} -> last {span}", f"{cpu_first:.0f} -> {cpu_last:.0f} "
             f"({cpu_last / cpu_first:.2f}x)", "flat (< 1.2x)", met["cpu"]],
            ["load generator CPU us per request (this process, whole soak)",
             f"{sum(i.client_us * i.sent for i in intervals) / max(sent, 1):.0f}", "small against the server's", None],
            ["throughput answered 2xx vs target (req/s)", f"{achieved:.0f} of {rate:.0f} ({achieved / rate:.0%})", ">= 99%",
             met["rate"]],
            ["database size start -> end (MB)", f"{intervals[0].db_mb:.1f} -> {intervals[-1].db_mb:.1f}", "grows (rows kept)", None]]
    if fresh:
        p99_fresh, cpu_fresh = pct([v for i in fresh for v in i.latencies], 99), cpu_per_request(fresh)
        rows.append([f"a fresh API process after the soak (same data, {WARM_UP_SECONDS:g} s warm-up), same load for "
                     f"{len(fresh) * every:.0f} s: p99 ms, server CPU us/req", f"{p99_fresh:.1f}, {cpu_fresh:.0f} (the soak's "
                     f"last {span}: {p99_last / p99_fresh:.2f}x, {cpu_last / cpu_fresh:.2f}x)", "~ the soak's end", None])
    shown = [[*r[:3], "-" if r[3] is None else "yes" if r[3] else "no"] for r in rows]
    return shown, all(met.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--share", type=float, default=0.8, help="the soak's rate as a share of the measured maximum")
    parser.add_argument("--twins", type=int, default=20_000)
    parser.add_argument("--interval", type=float, help="seconds per record (default 30, 10 when --minutes < 3)")
    parser.add_argument("--levels", default="4,8,16,32", help="closed-loop client counts of phase 1")
    parser.add_argument("--level-seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64, help="the open-loop client's connection pool")
    parser.add_argument("--fresh-seconds", type=float, default=30, help="the same load on a fresh process (0: skip)")
    args = parser.parse_args()
    every = args.interval or (30.0 if args.minutes >= 3 else 10.0)
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so the finally blocks stop the servers
    work = Path(tempfile.mkdtemp(prefix="bioverse-soak-"))
    began = time.perf_counter()
    env, token, ids = prepare(work, args.twins)
    setup_s = time.perf_counter() - began
    uvicorn = [str(Path(sys.executable).parent / "uvicorn"), "--log-level", "warning", "--no-access-log",
               "platform_api.asgi:app", "--port"]
    port = free_port()
    server = serve([*uvicorn, str(port)], env, port, "/healthz")
    fresh: list[Interval] = []
    try:
        target = Target(port, token, ids, server.pid, work / "platform.db")
        maximum, phase1 = asyncio.run(find_maximum(target, [int(n) for n in args.levels.split(",")], args.level_seconds))
        rate = args.share * maximum
        print(f"maximum {maximum:.0f} req/s; soak at {rate:.0f} req/s for {args.minutes:g} min", file=sys.stderr)
        intervals = asyncio.run(open_loop(target, rate, args.minutes * 60, every, args.connections))
    finally:
        server.terminate()
        server.wait(10)
    if args.fresh_seconds > 0:
        port = free_port()
        server = serve([*uvicorn, str(port)], env, port, "/healthz")
        try:
            again = Target(port, token, ids, server.pid, work / "platform.db", seed=8)
            asyncio.run(closed_loop(again, 8, WARM_UP_SECONDS))
            fresh = asyncio.run(open_loop(again, rate, args.fresh_seconds, every, args.connections))
        finally:
            server.terminate()
            server.wait(10)
    rows, ok = verdict(intervals, every, rate, fresh)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    body = (
        "## Soak: the prediction route at 80% of its maximum (`benchmarks/soak.py`)\n\n"
        f"{machine()} (load average {load} at the end: 1, 5, 15 min; the machine is shared with other agents' "
        f"builds and tests, so its load moves under the soak). The platform API as in `api_predictions.py` (uvicorn, "
        f"one process, in-process NumPy scoring, SQLite platform database, Feast SQLite online store), {len(ids)} twins "
        f"with features (set up in {setup_s:.0f} s). Phase 1: closed loop, {args.levels} concurrent clients, "
        f"{args.level_seconds:g} s each after a {WARM_UP_SECONDS:g} s warm-up; the best throughput is the maximum. Phase 2: open loop (constant arrivals, "
        f"raw keep-alive HTTP/1.1 on asyncio in the benchmark's process, {args.connections} connections) at {args.share:.0%} of it "
        f"for {args.minutes:g} min; each request scores one twin: {HOT_SHARE:.0%} of them one of {HOT_TWINS} hot twins "
        f"(re-scored patients, cache hits), the rest uniform over all {len(ids)}. Latency runs from each request's "
        f"scheduled send time, so a stall counts for every request it delays. RSS and open files: the API process "
        f"tree; database: platform.db with its WAL. {READING} Verdict: {'every aim met' if ok else 'NOT every aim met'}.\n\n"
        "Phase 1 (closed loop):\n\n"
        + table(["clients", "req/s", "p50 ms", "p99 ms", "errors"], phase1)
        + f"\n\nPhase 2, every {every:g} s (requests counted in the interval they were scheduled in):\n\n"
        + table(["t s", "sent", "req/s", "errors", "p50 ms", "p99 ms", "server CPU us/req", "RSS MB", "open fds", "DB MB", "load 1 min"],
                [row(i, interval, every) for i, interval in enumerate(intervals)])
        + "\n\nVerdict (start against end of the same run):\n\n"
        + table(["measure", "value", "aim", "met"], rows)
    )
    print(body)
    write_section("soak", body)


if __name__ == "__main__":
    main()
