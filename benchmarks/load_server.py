"""Load test of ``unimir serve``: N concurrent clients on loopback, compared with the same searches in-process.

    python -m benchmarks.load_server [--quick] [--clients 32] [--requests 1500] [--json out.json]

Builds a small index (clip-art images, image+text captions and texts) in a temporary folder, starts the real
CLI (``python -m unimir serve``) in a subprocess, and drives it with N keep-alive HTTP/1.1 connections (a minimal
asyncio client, so the load generator steals as little CPU from the server as possible) until a fixed number of
requests is done. The query mix is 80% text and 20% image (base64 JSON) searches, k=10. Reports requests/s,
p50/p90/p99 latency and the error count (non-200 answers, malformed bodies, connection failures), next to the
throughput of the same searches made sequentially in-process with ``Index.search`` (measured before and after
the load, the better of the two is the baseline). Target: 0 errors and >= 80% of the in-process throughput.

``run(quick) -> dict`` is the entry point for a benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT_QUERIES = ["a red circle", "blue square", "something green", "a hot bowl of soup", "mountains with snow",
                "a dog playing outside", "stock market news", "an orange triangle", "a purple shape",
                "coffee and a pastry", "a sports car", "teal triangle", "find a square", "breakfast", "a circle"]
IMAGE_SHARE = 5  # every 5th query is an image query


def _build_index(folder: Path, quick: bool) -> tuple[Path, list[dict]]:
    from unimir.data.records import Candidate, Modality
    from unimir.index import Index
    from unimir.serve.testing import SHAPES, draw, png_bytes, sample_pool

    root = folder / "data"
    cands = sample_pool(root)
    extra = 100 if quick else 400
    words = ["market", "river", "garden", "train", "violin", "pasta", "winter", "city", "ocean", "forest"]
    for i in range(extra):
        cands.append(Candidate(f"extra:{i}", Modality.TEXT,
                               f"A note about the {words[i % 10]} and the {words[(i * 7 + 3) % 10]}, number {i}."))
    out = folder / "index"
    Index.build(cands, out, root=root, encoder="builtin")
    images = [png_bytes(draw(c, s, 128)) for c in ("red", "green", "blue", "orange") for s in SHAPES]
    queries = []
    for i in range(60):
        if i % IMAGE_SHARE == IMAGE_SHARE - 1:
            queries.append({"image": images[i % len(images)], "k": 10})
        else:
            queries.append({"text": TEXT_QUERIES[i % len(TEXT_QUERIES)], "k": 10})
    return out, queries


def _in_process(index_dir: Path, queries: list[dict], n: int) -> float:
    """Sequential searches/s with ``Index.search`` in this process, in its best torch thread setting.

    Both the default intra-op thread count and a single thread are tried (on a busy small machine OpenMP's
    spinning makes multi-threaded single-query inference far slower); the better rate is the baseline.
    """
    import torch

    from unimir.index import Index

    index = Index.load(index_dir)
    default_threads = torch.get_num_threads()
    rates = []
    try:
        for threads in dict.fromkeys((default_threads, 1)):
            torch.set_num_threads(threads)
            for q in queries[:10]:
                index.search(q.get("text"), q.get("image"), k=q["k"])
            t = time.perf_counter()
            for i in range(n):
                q = queries[i % len(queries)]
                index.search(q.get("text"), q.get("image"), k=q["k"])
            rates.append(n / (time.perf_counter() - t))
    finally:
        torch.set_num_threads(default_threads)
    return max(rates)


def _request_bytes(q: dict, port: int) -> bytes:
    body = {"k": q["k"]}
    if "text" in q:
        body["text"] = q["text"]
    if "image" in q:
        body["image"] = base64.b64encode(q["image"]).decode()
    data = json.dumps(body).encode()
    head = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n").encode()
    return head + data


async def _client(port: int, requests: list[bytes], counter: list[int], total: int, latencies: list[float],
                  errors: list[str]) -> None:
    reader = writer = None
    while True:
        i = counter[0]
        if i >= total:
            break
        counter[0] += 1
        t = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(requests[i % len(requests)])
            status_line = await reader.readline()
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length)
            status = int(status_line.split()[1]) if status_line else 0
            if status != 200:
                errors.append(f"HTTP {status}: {body[:200]!r}")
            elif json.loads(body).get("count") != 10:
                errors.append(f"unexpected body {body[:200]!r}")
            else:
                latencies.append(time.perf_counter() - t)
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _load(port: int, requests: list[bytes], clients: int, total: int) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    counter = [0]
    t = time.perf_counter()
    await asyncio.gather(*(_client(port, requests, counter, total, latencies, errors) for _ in range(clients)))
    return time.perf_counter() - t, latencies, errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"unimir serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("unimir serve did not become healthy in time")


def run(quick: bool = False, clients: int = 32, requests: int | None = None) -> dict:
    """Run the load test; returns the figures as a dict (see the module docstring)."""
    total = requests or (400 if quick else 1500)
    baseline_n = max(100, total // 3)
    with tempfile.TemporaryDirectory(prefix="unimir-load-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "UNIMIR_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        saved_cache = os.environ.get("UNIMIR_CACHE_DIR")
        os.environ["UNIMIR_CACHE_DIR"] = env["UNIMIR_CACHE_DIR"]  # no user cache touched by the build either
        try:
            index_dir, queries = _build_index(tmp, quick)
            before = _in_process(index_dir, queries, baseline_n)
        finally:
            if saved_cache is None:
                os.environ.pop("UNIMIR_CACHE_DIR", None)
            else:
                os.environ["UNIMIR_CACHE_DIR"] = saved_cache

        port = _free_port()
        log = tmp / "serve.log"
        with open(log, "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "unimir", "serve", str(index_dir), "--port", str(port)],
                                    stdout=log_file, stderr=subprocess.STDOUT, env=env)
            try:
                _wait_healthy(port, proc, log)
                payloads = [_request_bytes(q, port) for q in queries]
                asyncio.run(_load(port, payloads, clients, min(total, 4 * clients)))  # warm-up
                seconds, latencies, errors = asyncio.run(_load(port, payloads, clients, total))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        after = _in_process(index_dir, queries, baseline_n)

    lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    rps = total / seconds
    baseline = max(before, after)
    return {"clients": clients, "requests": total, "seconds": round(seconds, 2), "rps": round(rps, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p90_ms": round(float(np.percentile(lat, 90)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "errors": len(errors), "error_samples": errors[:5],
            "in_process_rps": round(baseline, 1), "in_process_rps_before_after": [round(before, 1), round(after, 1)],
            "ratio": round(rps / baseline, 3), "target_met": not errors and rps >= 0.8 * baseline,
            "query_mix": f"{100 - 100 // IMAGE_SHARE}% text, {100 // IMAGE_SHARE}% image; k=10"}


def format_result(r: dict) -> str:
    lines = [f"unimir serve under load: {r['clients']} concurrent clients, {r['requests']} requests ({r['query_mix']})",
             f"  throughput   {r['rps']:8.1f} req/s   ({r['seconds']} s)",
             f"  latency      p50 {r['p50_ms']:.1f} ms   p90 {r['p90_ms']:.1f} ms   p99 {r['p99_ms']:.1f} ms",
             f"  errors       {r['errors']}",
             f"  in-process   {r['in_process_rps']:8.1f} searches/s (sequential Index.search; before/after "
             f"{r['in_process_rps_before_after'][0]}/{r['in_process_rps_before_after'][1]})",
             f"  ratio        {r['ratio']:.2f} of in-process (target >= 0.80, 0 errors): "
             f"{'met' if r['target_met'] else 'NOT met'}"]
    lines += [f"  error: {e}" for e in r["error_samples"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller index and 400 requests")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    result = run(args.quick, clients=args.clients, requests=args.requests)
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
