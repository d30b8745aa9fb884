"""Image classification serving: the VisionClassifier Ray Serve deployment over HTTP against
plain PyTorch loops over the same model weights, measured in the same run.

For each model (a SmallCNN at 28x28x1 and a ResNet-18 at 64x64x3, both trained briefly on a
synthetic imaging hospital and registered with the ``production`` alias in a temporary MLflow
store) it measures, on the CPU (and on CUDA where torch sees a GPU):

* plain loop: ``softmax(model(x))`` over batches of 32 already decoded, normalised float
  tensors: the ceiling for this model and thread count (the baseline of every ratio);
* one image at a time: Pillow decode of the PNG bytes, normalise, ``model(x)`` per image,
  the textbook request handler without any server;
* ``classify_blobs`` in process: what one Serve batch does (decode with the model's
  preprocessing, predict, describe) on batches of 32 PNGs, without HTTP or Serve;
* Ray Serve: ``build_vision_app`` behind Serve's HTTP proxy, closed-loop load of N clients
  each POSTing one real PNG after another (and 1 client for latency).

Usage: python benchmarks/vision_serving.py [--quick] [--seconds 12] [--clients 16] [--threads N] [--no-resnet]
Prints a table and rewrites the ``vision-serving`` section of benchmarks/RESULTS.md
(``--quick``, a smoke run with fewer requests, only prints).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import os
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from _results import machine, table, write_section

CLASSES = ("normal", "nodule", "opacity")
BATCH = 32

#: (label, kind, size, channels, width, images in the hospital, training epochs)
CASES = [
    ("SmallCNN w16, 28x28x1", "cnn", 28, 1, 16, 480, 2),
    ("ResNet18 w32, 64x64x3", "resnet18", 64, 3, 32, 240, 1),
]


@dataclass
class Bench:
    """One registered model and the images to send it."""

    label: str
    kind: str
    name: str  # registered model name, also the Serve application and route
    version: str
    model: Any  # VisionModel, eval mode, on the CPU
    preprocessor: Any  # ImagePreprocessor
    blobs: list[bytes]  # real PNG files of the synthetic hospital


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model set-up


def register(uri: str, name: str, model: Any, preprocessor: Any, kind: str, hparams: dict[str, Any]) -> str:
    """Log ``model`` as a VisionModelPackage pyfunc, register it as ``name`` and point
    ``production`` at the new version (as `RunTracker.register` does, plus the approval)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from experiments.gate import mark_approved
    from experiments.tracking import pip_requirements
    from training.imaging.package import VisionModelPackage, save_vision_package_files, vision_example, vision_signature

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("bench-vision-serving")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        artifacts = save_vision_package_files(Path(tmp), model, preprocessor, kind, hparams)
        info = mlflow.pyfunc.log_model(name="model", python_model=VisionModelPackage(), artifacts=artifacts,
                                       signature=vision_signature(preprocessor), input_example=vision_example(preprocessor),
                                       pip_requirements=pip_requirements())
    version = str(mlflow.register_model(info.model_uri, name).version)
    os.environ.setdefault("BIOVERSE_GATE_KEY", secrets.token_hex(32))  # shared with the Serve replicas
    mark_approved(uri, name, version)  # production serves gate-signed versions only (docs/review.md)
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(name, "production", version)
    return version


def prepare(case: tuple[str, str, int, int, int, int, int], work: Path, uri: str) -> Bench:
    """Synthesize one hospital, train the model for a few plain epochs, register it."""
    from training.imaging.data import ImageContract, load_image_split
    from training.imaging.local import train_vision_locally
    from training.imaging.preprocessing import ImagePreprocessor, pixel_statistics
    from training.imaging.synth import synthesize_image_hospitals
    from training.imaging.vision import build_vision_model

    label, kind, size, channels, width, n_images, epochs = case
    started = time.perf_counter()
    folder = synthesize_image_hospitals(work / f"data-{kind}", n_hospitals=1, images_per_hospital=n_images, size=size,
                                        channels=channels, classes=CLASSES, layout="folder", seed=11)[0]
    split = load_image_split(folder, ImageContract(classes=CLASSES, size=size, channels=channels))
    preprocessor = ImagePreprocessor.from_statistics([pixel_statistics(split.train_images)], size=size,
                                                     channels=channels, classes=CLASSES)
    torch.manual_seed(0)
    hparams = {"width": width}
    model = build_vision_model(kind, channels, len(CLASSES), **hparams)
    result = train_vision_locally(model, split.train_images, split.train_labels, mean=preprocessor.mean,
                                  std=preprocessor.std, epochs=epochs, batch_size=64, dp=None, seed=0)
    name = f"bench-vision-{kind}"
    version = register(uri, name, model, preprocessor, kind, hparams)
    blobs = [p.read_bytes() for p in sorted((folder / "images").glob("*.png"))]
    log(f"{label}: trained {epochs} epoch(s) (loss {result.loss:.3f}), registered {name} v{version}, "
        f"{len(blobs)} PNGs of ~{statistics.mean(map(len, blobs)):.0f} bytes, {time.perf_counter() - started:.1f} s")
    return Bench(label, kind, name, version, model.cpu().eval(), preprocessor, blobs)


# --------------------------------------------------------------------------- in-process paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_for(step: Callable[[int], int], seconds: float, device: torch.device) -> tuple[float, list[float]]:
    """Call ``step(i)`` (returns images done) until ``seconds`` pass: images/s and per-call seconds."""
    latencies: list[float] = []
    done, i = 0, 0
    _sync(device)
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        t = time.perf_counter()
        done += step(i)
        _sync(device)
        latencies.append(time.perf_counter() - t)
        i += 1
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - started), latencies


def measure_in_process(bench: Bench, device: torch.device, seconds: float, repeats: int) -> dict[str, dict[str, float]]:
    """The three in-process paths, ``repeats`` interleaved rounds after a warm-up: median images/s
    (and per-image latency percentiles of the one-at-a-time path, pooled over the rounds)."""
    from serving.loaded import LoadedVisionModel
    from serving.vision import classify_blobs
    from training.imaging.decode import decode_image
    from training.imaging.scoring import VisionScorer

    pre = bench.preprocessor
    model = copy.deepcopy(bench.model).to(device).eval()
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    decoded = np.stack([decode_image(b, size=pre.size, channels=pre.channels) for b in bench.blobs])
    x = ((torch.from_numpy(decoded).to(device).float() / 255 - mean) / std).contiguous()
    batches = list(x.split(BATCH))
    blob_batches = [bench.blobs[i:i + BATCH] for i in range(0, len(bench.blobs), BATCH)]
    mode = "L" if pre.channels == 1 else "RGB"
    loaded = LoadedVisionModel(bench.name, bench.version, VisionScorer(copy.deepcopy(bench.model), pre, device))

    def plain(i: int) -> int:
        with torch.inference_mode():
            batch = batches[i % len(batches)]
            torch.softmax(model(batch), dim=-1).cpu()
        return len(batch)

    def one_at_a_time(i: int) -> int:
        image = Image.open(io.BytesIO(bench.blobs[i % len(bench.blobs)])).convert(mode)
        pixels = torch.from_numpy(np.asarray(image))
        pixels = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)
        with torch.inference_mode():
            xi = ((pixels.to(device).float() / 255)[None] - mean) / std
            torch.softmax(model(xi), dim=-1).cpu()
        return 1

    def blobs_batched(i: int) -> int:
        blobs = blob_batches[i % len(blob_batches)]
        classify_blobs(loaded, blobs)
        return len(blobs)

    paths = {"plain": plain, "one": one_at_a_time, "classify_blobs": blobs_batched}
    for step in paths.values():
        run_for(step, min(seconds, 0.5), device)  # warm-up: allocator, kernels, lazy imports
    rates: dict[str, list[float]] = {k: [] for k in paths}
    lat: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeats):  # interleaved, so drift hits every path alike
        for key, step in paths.items():
            rate, latencies = run_for(step, seconds, device)
            rates[key].append(rate)
            lat[key] += latencies
    out: dict[str, dict[str, float]] = {}
    for key in paths:
        ordered = sorted(lat[key])
        out[key] = {"ips": statistics.median(rates[key]), "p50": ordered[len(ordered) // 2] * 1e3,
                    "p99": ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)] * 1e3}
        log(f"  {bench.kind} {device.type} {key}: {out[key]['ips']:,.0f} img/s "
            f"(rounds {', '.join(f'{r:,.0f}' for r in rates[key])})")
    return out


# --------------------------------------------------------------------------- Serve


def serve_processes() -> dict[str, psutil.Process]:
    """``replica:<app>`` and ``proxy`` -> the Ray worker process running it."""
    found: dict[str, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::ServeReplica:"):
            parts = title.split(":")
            found[f"replica:{parts[3] if len(parts) > 3 else title}"] = process
        elif title.startswith("ray::ProxyActor"):
            found["proxy"] = process
    return found


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for key, process in processes.items():
        try:
            t = process.cpu_times()
            out[key] = t.user + t.system
        except psutil.Error:
            out[key] = float("nan")
    return out


async def http_load(url: str, blobs: list[bytes], clients: int, seconds: float, per_request: int = 1) -> dict[str, float]:
    """Closed loop: each client POSTs one PNG (or ``per_request`` PNGs as one multipart
    request) after another for ``seconds``."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "image/png"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        deadline = time.perf_counter() + seconds

        def payload(i: int) -> dict[str, Any]:
            if per_request == 1:
                return {"data": blobs[i % len(blobs)], "headers": headers}
            form = aiohttp.FormData()
            for j in range(per_request):
                form.add_field("image", blobs[(i + j) % len(blobs)], filename=f"{j}.png", content_type="image/png")
            return {"data": form}

        async def client(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                async with session.post(url, **payload(i)) as response:
                    body = await response.json()
                latencies.append(time.perf_counter() - t)
                ok = "label" in body if per_request == 1 else len(body.get("predictions", [])) == per_request
                errors += response.status != 200 or not ok
                i += clients * per_request

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"ips": len(latencies) * per_request / elapsed, "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] * 1e3,
            "errors": float(errors), "requests": float(len(latencies)), "elapsed": elapsed}


def start_serve(benches: list[Bench], uri: str, batch: tuple[int, float]) -> tuple[int, int, str]:
    """Start Ray and Serve in process and deploy one VisionClassifier per model.

    Returns the HTTP port, and the torch threads and ``OMP_NUM_THREADS`` a worker with the
    replica's resources (0.5 CPU) gets, as seen by a probe actor.
    """
    import ray
    from ray import serve

    from federation.processes import free_port
    from serving.app import build_vision_app

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for bench in benches:
        serve.run(build_vision_app({"tracking_uri": uri, "model_name": bench.name, "num_gpus": 0.25,
                                    "max_batch_size": batch[0], "batch_wait_timeout_s": batch[1]}),
                  name=bench.name, route_prefix=f"/{bench.name}")

    @ray.remote(num_cpus=0.5)
    class Probe:
        def threads(self) -> tuple[int, str]:
            import os

            import torch

            return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS", "unset")

    probe = Probe.remote()  # type: ignore[attr-defined]
    threads, omp = ray.get(probe.threads.remote())
    ray.kill(probe)
    log(f"Ray + Serve up, {len(benches)} application(s) deployed in {time.perf_counter() - started:.1f} s (port {port}); "
        f"a 0.5-CPU worker runs torch with {threads} thread(s), OMP_NUM_THREADS={omp}")
    return port, threads, omp


#: Images per multipart request in the many-images-per-request pass.
MULTI = 16


def measure_serve(benches: list[Bench], port: int, args: argparse.Namespace) -> tuple[dict[str, dict[tuple[int, int], dict[str, float]]], dict[str, dict[str, Any]]]:
    """Drive closed-loop HTTP load at each application: warm-up, ``args.clients`` clients, 1
    client, then ``args.clients`` clients sending :data:`MULTI` images per request."""
    import httpx

    results: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
    facts: dict[str, dict[str, Any]] = {}
    me = psutil.Process()
    for bench in benches:
        url = f"http://127.0.0.1:{port}/{bench.name}"
        info = httpx.get(url, timeout=30).json()
        processes = serve_processes()
        replica = processes.get(f"replica:{bench.name}")
        facts[bench.name] = {"device": info.get("device", "?"), "version": info.get("model_version")}
        watched = {"replica": replica, "proxy": processes.get("proxy")}
        watched = {k: v for k, v in watched.items() if v is not None}
        watched["client"] = me
        asyncio.run(http_load(url, bench.blobs, args.clients, args.warmup))  # warm-up
        results[bench.name] = {}
        for clients, per_request in ((args.clients, 1), (1, 1), (args.clients, MULTI)):
            before = cpu_seconds(watched)
            r = asyncio.run(http_load(url, bench.blobs, clients, args.seconds if clients > 1 else args.seconds / 2,
                                      per_request))
            r["per_request"] = float(per_request)
            after = cpu_seconds(watched)
            for key in watched:
                r[f"cpu_{key}"] = (after[key] - before[key]) / r["elapsed"]
            results[bench.name][(clients, per_request)] = r
            log(f"  {bench.kind} serve {clients} client(s) x {per_request} image(s): {r['ips']:,.0f} img/s, p50 {r['p50']:.1f} ms, "
                f"p99 {r['p99']:.1f} ms, {r['errors']:.0f} errors; CPU cores replica {r.get('cpu_replica', float('nan')):.2f}, "
                f"proxy {r.get('cpu_proxy', float('nan')):.2f}, client {r['cpu_client']:.2f}")
        if replica is not None:
            facts[bench.name]["rss_mb"] = replica.memory_info().rss / 2**20
    return results, facts


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short passes, one round; only prints")
    parser.add_argument("--seconds", type=float, default=12, help="seconds of the 16-client HTTP pass (1 client: half)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads of the in-process paths; 0 (default): as many as the replica gets")
    parser.add_argument("--no-resnet", action="store_true", help="only the SmallCNN")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the VisionClassifier's max_batch_size (requests)")
    parser.add_argument("--batch-wait", type=float, default=0.005, help="its batch_wait_timeout_s")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.quick:
        args.seconds, args.warmup, base_seconds, repeats = 3.0, 1.0, 0.5, 1
    else:
        args.warmup, base_seconds, repeats = 3.0, 2.0, 3
    total = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bioverse-vision-serving-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cases = CASES[:1] if args.no_resnet else CASES
    benches = [prepare(case, work, uri) for case in cases]

    import ray
    from ray import serve

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    try:
        # Serve is up (and idle) while the in-process paths run, so they share its conditions
        port, replica_threads, replica_omp = start_serve(benches, uri, (args.max_batch_size, args.batch_wait))
        matched = not args.threads or args.threads == replica_threads
        args.threads = args.threads or replica_threads
        torch.set_num_threads(args.threads)
        local = {(b.name, d.type): measure_in_process(b, d, base_seconds, repeats) for b in benches for d in devices}
        serve_results, facts = measure_serve(benches, port, args)
    finally:
        serve.shutdown()
        ray.shutdown()

    def cell(value: float, fmt: str = "{:,.1f}") -> str:
        return fmt.format(value) if value == value else "—"

    rows: list[list[str]] = []
    for bench in benches:
        for device in devices:
            base = local[(bench.name, device.type)]
            ref = base["plain"]["ips"]
            for key, path in (("plain", "plain PyTorch loop, batches of 32 (baseline)"),
                              ("one", "one image at a time: Pillow decode + normalise + model"),
                              ("classify_blobs", "`classify_blobs` in process, batches of 32 PNGs")):
                r = base[key]
                p50, p99 = (cell(r["p50"]), cell(r["p99"])) if key == "one" else ("—", "—")
                rows.append([bench.label, path, device.type, "—", f"{r['ips']:,.0f}", p50, p99, f"{r['ips'] / ref:.2f}", "—"])
        fact = facts[bench.name]
        served_on = "cuda" if str(fact["device"]).startswith("cuda") else "cpu"
        ref = local[(bench.name, served_on)]["plain"]["ips"]
        for (clients, per_request), r in serve_results[bench.name].items():
            cpu = f"{r.get('cpu_replica', float('nan')):.2f} / {r.get('cpu_proxy', float('nan')):.2f} / {r['cpu_client']:.2f}"
            errors = f" ({r['errors']:.0f} errors)" if r["errors"] else ""
            how = "one PNG per request" if per_request == 1 else f"{per_request} PNGs per multipart request"
            rows.append([bench.label, f"Ray Serve VisionClassifier over HTTP, {how}{errors}", str(fact["device"]), str(clients),
                         f"{r['ips']:,.0f}", cell(r["p50"]), cell(r["p99"]), f"{r['ips'] / ref:.2f}", cpu])
    headers = ["model, input", "path", "device", "clients", "images/s", "p50 ms", "p99 ms", "vs plain loop",
               "CPU cores replica / proxy / client"]
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"
    replicas = f"Replica workers (0.5 CPU) run torch with {replica_threads} thread(s) (OMP_NUM_THREADS {replica_omp}); " + "; ".join(
        f"{b.label}: replica on {facts[b.name]['device']}, RSS {facts[b.name].get('rss_mb', float('nan')):,.0f} MB after the load"
        for b in benches)
    body = (
        "## Vision serving (`benchmarks/vision_serving.py`)\n\n"
        f"{machine()} (load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end: 1, 5, 15 min; "
        f"shared with other agents' work){gpu}; torch {torch.__version__}, {args.threads} CPU thread(s) for the in-process paths"
        f"{' (as the replica)' if matched else ''}. "
        "Serve was up and idle while the in-process paths ran. "
        "Models trained for 1-2 plain epochs on one synthetic hospital (3 classes) and registered with the `production` "
        "alias in an embedded MLflow store; every path scores the same weights and the same real PNG files of that hospital.\n\n"
        "- **plain PyTorch loop** (baseline of every ratio): `softmax(model(x))` over batches of 32 images already decoded "
        "and normalised to float tensors on the device, in inference mode: the model's ceiling at this thread count.\n"
        "- **one image at a time**: per image, Pillow decodes the PNG bytes, the pixels are normalised and sent through "
        "the model alone; p50/p99 are per image.\n"
        "- **`classify_blobs` in process**: the work of one Serve batch (decode with the model's preprocessing, "
        "`VisionScorer.predict`, per-image JSON-able results) on 32 PNGs at a time, without HTTP or Serve.\n"
        f"- **Ray Serve**: `build_vision_app` (`num_gpus` 0.25, granted only where Ray sees a GPU; 0.5 CPU per replica, "
        f"one replica, `@serve.batch` up to {args.max_batch_size} requests / {args.batch_wait * 1e3:g} ms, each request one "
        f"batch item of all its images) behind Serve's HTTP proxy on loopback; closed-loop load from "
        f"aiohttp clients in the same process, each POSTing one PNG (`Content-Type: image/png`) after another, or "
        f"{MULTI} PNGs as one `multipart/form-data` request (its images stay together in one batch item); "
        f"{args.warmup:g} s warm-up, then {args.seconds:g} s with {args.clients} clients, {args.seconds / 2:g} s with 1, "
        f"and {args.seconds:g} s with {args.clients} clients sending {MULTI} images per request; "
        "p50/p99 are per request. Ratios are against the plain loop on the replica's device. The last column is the CPU "
        f"the replica process, the HTTP proxy and the load generator each used during the pass (in cores, of "
        f"{os.cpu_count()}).\n\n"
        f"{replicas}.\n\n"
        + table(headers, rows)
    )
    print(body)
    log(f"total {time.perf_counter() - total:.0f} s")
    if not args.quick:
        write_section("vision-serving", body)


if __name__ == "__main__":
    main()
