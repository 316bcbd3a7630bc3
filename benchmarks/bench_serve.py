"""Serving under load: `tinystories serve` with 64 concurrent streaming clients, against `sample` in the same run.

For each model (llama2.c's stories260K imported with `tinystories convert`, and
random weights of the llama-15m shape with the Llama 2 tokenizer) this starts
`tinystories serve` as its own process and, in a third process, a load
generator (this file with `--client`): N clients on loopback, each sending
streaming /v1/completions requests one after the other on one kept-alive
connection, as HTTP clients' connection pools do (an empty prompt,
temperature 1, `--max-tokens` new tokens at most, a story may end earlier at
end-of-text) until `--seconds` have passed. It records errors, tokens/s (from
each stream's final usage chunk), time to first token and the gaps between
the events a client receives (each event carries one token or, when the client
fell behind, the several that arrived meanwhile), p50 and p99, and the CPU
seconds of the server and of the load generator.

The same run measures, with the same model and the same workload, the library
sampler that `tinystories sample` uses: `complete` of 64 stories at 64 rows
(once before and once after the server runs; the mean of the two), the same
sampler with one stream, and a single client against the server.

Writes benchmarks/results/serve.json and prints a markdown table.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 60] [--clients 64] [--max-tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
TESTDATA = Path(os.environ.get("TINYSTORIES_TESTDATA", ROOT.parent / "shared" / "data"))
_USAGE = re.compile(rb"\"completion_tokens\": ?(\d+)")


# --- the load generator (its own process) ----------------------------------------------------


async def _one_request(conn: list, port: int, body: bytes, stats: dict) -> None:
    """One streaming request on the client's kept-alive connection `conn` ([reader, writer], opened when empty)."""
    if not conn:
        conn.extend(await asyncio.open_connection("127.0.0.1", port))
    reader, writer = conn
    ok = False
    try:
        t0 = time.perf_counter()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            stats["errors"].append(head.split(b"\r\n", 1)[0].decode())
            return
        last = None
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the chunked body
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            events = data.count(b"data: {")
            if events:
                if last is None:
                    stats["ttft"].append(now - t0)
                else:
                    stats["gaps"].append(now - last)
                last = now
                stats["events"] += events
            tail = (tail + data)[-4096:]
        found = _USAGE.findall(tail)
        if not found or b"data: [DONE]" not in tail:
            stats["errors"].append("stream ended without usage and [DONE]")
            return
        stats["tokens"] += int(found[-1])
        stats["requests"] += 1
        ok = True
    finally:
        if not ok:  # a fresh connection for the next request
            writer.close()
            conn.clear()


async def _clients(port: int, model: str, clients: int, seconds: float, max_tokens: int, max_requests: int) -> dict:
    stats: dict = {"errors": [], "ttft": [], "gaps": [], "events": 0, "tokens": 0, "requests": 0}
    start = time.perf_counter()
    deadline = start + seconds
    sent = 0

    async def client(i: int) -> None:
        nonlocal sent
        k = 0
        conn: list = []  # kept alive from one request to the next, as HTTP clients' connection pools do
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            body = json.dumps({"model": model, "prompt": "", "max_tokens": max_tokens, "temperature": 1.0,
                               "seed": 1000 * i + k, "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            k += 1
            try:
                await asyncio.wait_for(_one_request(conn, port, body, stats), timeout=seconds + 30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                stats["errors"].append(f"{type(e).__name__}: {e}")
        if conn:
            conn[1].close()

    cpu0 = time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    stats["wall_s"] = time.perf_counter() - start
    stats["cpu_s"] = time.process_time() - cpu0
    return stats


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def client_main(args: argparse.Namespace) -> None:
    stats = asyncio.run(_clients(args.port, args.model, args.clients, args.seconds, args.max_tokens,
                                 args.max_requests))
    print(json.dumps({
        "clients": args.clients,
        "requests": stats["requests"],
        "errors": len(stats["errors"]),
        "error_examples": sorted(set(stats["errors"]))[:5],
        "tokens": stats["tokens"],
        "wall_s": round(stats["wall_s"], 2),
        "tokens_per_s": round(stats["tokens"] / stats["wall_s"], 1),
        "ttft_ms": {"p50": _pct(stats["ttft"], 0.5), "p99": _pct(stats["ttft"], 0.99)},
        "event_gap_ms": {"p50": _pct(stats["gaps"], 0.5), "p99": _pct(stats["gaps"], 0.99)},
        "tokens_per_event": round(stats["tokens"] / max(stats["events"], 1), 2),
        "loadgen_cpu_s": round(stats["cpu_s"], 2),
    }))


# --- the runner -----------------------------------------------------------------------------


def _tinystories(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinystories", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_runs(tmp: Path, names: list[str]) -> dict[str, Path]:
    """Run folders: stories260K imported, llama-15m-shaped random weights with the Llama 2 tokenizer."""
    import torch

    from tinystories.convert.llama2c import llama2c_v0_bytes
    from tinystories.model import GPT
    from tinystories.presets import preset

    runs = {}
    for name in names:
        if name == "stories260K":
            src, tok = TESTDATA / "llama2c" / "stories260K.bin", TESTDATA / "llama2c" / "tok512.model"
        else:
            torch.manual_seed(0)
            model = GPT(preset(name))
            src, tok = tmp / f"{name}.bin", TESTDATA / "llama2c" / "tokenizer.model"
            src.write_bytes(llama2c_v0_bytes(model.config, model.state_dict()))
        if not src.is_file() or not tok.is_file():
            print(f"skipping {name}: {src} or {tok} not found (set TINYSTORIES_TESTDATA)")
            continue
        out = tmp / name
        subprocess.run(_tinystories("convert", "--from", str(src), "--tokenizer", str(tok), "--out", str(out)),
                       env=_env(), check=True, stdout=subprocess.DEVNULL)
        runs[name] = out
    return runs


def sample_rate(run: Path, streams: int, max_tokens: int, threads: int) -> float:
    """Tokens/s of the library sampler (`tinystories sample`'s) over `streams` stories at `streams` rows."""
    import torch

    from tinystories.rundir import load_run
    from tinystories.sample import SampleParams, complete

    torch.set_num_threads(threads)
    loaded = load_run(run)
    eot = loaded.tokenizer.eot_id
    n = 0

    def count(i: int, token: int) -> None:
        nonlocal n
        n += 1  # end-of-text included, as the server's usage counts it

    prompts = [[eot]] * streams
    complete(loaded.model, prompts, SampleParams(max_new_tokens=32, seed=1), eot_id=eot, max_batch=streams)
    t0 = time.perf_counter()
    complete(loaded.model, prompts, SampleParams(max_new_tokens=max_tokens, seed=0), eot_id=eot, max_batch=streams,
             on_token=count)
    return n / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants_cpu_s(pid: int) -> float:
    """CPU seconds of a process's live descendants."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += _own_cpu_s(int(child)) + _descendants_cpu_s(int(child))
    return total


def _cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds of the server process itself ("http") and of its descendants ("engine": the engine
    process, and multiprocessing's resource tracker, which uses next to none)."""
    return {"http": _own_cpu_s(pid), "engine": _descendants_cpu_s(pid)}


@contextlib.contextmanager
def server(run: Path, streams: int, threads: int, slice_ms: float | None = None, engine: str = "process"):
    port = _free_port()
    env = _env() | {"OMP_NUM_THREADS": str(threads)}  # torch's threads, as the library side sets them
    proc = subprocess.Popen(_tinystories("serve", "--run", str(run), "--port", str(port), "--max-streams",
                                         str(streams), "--max-queue", "1024", "--log-level", "warning",
                                         "--engine", engine,
                                         *(["--step-slice-ms", str(slice_ms)] if slice_ms else [])),
                            env=env)
    try:
        deadline = time.time() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    break
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("the server did not come up")
            time.sleep(0.2)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(proc: subprocess.Popen, port: int, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    cpu0 = _cpu_split(proc.pid)
    t0 = time.perf_counter()
    gen = subprocess.run([sys.executable, __file__, "--client", "--port", str(port), "--model", model,
                          "--clients", str(clients), "--seconds", str(seconds), "--max-tokens", str(max_tokens)],
                         env=_env(), capture_output=True, text=True, timeout=seconds + 120)
    if gen.returncode != 0:
        raise RuntimeError(gen.stderr)
    out = json.loads(gen.stdout)
    wall = time.perf_counter() - t0
    cpu1 = _cpu_split(proc.pid)
    split = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    out["server_cpu_s"] = round(sum(split.values()), 2)
    out["cpu_cores"] = {"server": round(out["server_cpu_s"] / wall, 2),
                        **{f"server_{k}": round(v / wall, 2) for k, v in split.items()},
                        "load_generator": round(out["loadgen_cpu_s"] / wall, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 64-client load")
    ap.add_argument("--one-seconds", type=float, default=20.0, help="length of the single-client load")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=200, help="new tokens per request at most (llama-15m: 256 ctx)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="requests per load at most")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and the library sampler")
    ap.add_argument("--models", default="stories260K,llama-15m")
    ap.add_argument("--slice-ms", type=float, help="the server's --step-slice-ms (default: its own)")
    ap.add_argument("--engine", default="process", choices=["process", "inline"], help="the server's --engine")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args)

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from tinystories.io import atomic_write_text

    t_start = time.perf_counter()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in make_runs(Path(tmp), args.models.split(",")).items():
            uptime = [os.getloadavg()[0]]
            before = sample_rate(run, args.clients, args.max_tokens, args.threads)
            sample_one = sample_rate(run, 1, args.max_tokens, args.threads)
            with server(run, args.clients, args.threads, args.slice_ms, args.engine) as (proc, port):
                many = load(proc, port, name, args.clients, args.seconds, args.max_tokens)
                one = load(proc, port, name, 1, args.one_seconds, args.max_tokens)
            after = sample_rate(run, args.clients, args.max_tokens, args.threads)
            uptime.append(os.getloadavg()[0])
            sample_tps = statistics.mean([before, after])
            case = {
                "model": name,
                "clients": args.clients,
                "max_tokens": args.max_tokens,
                "seconds": args.seconds,
                "server": many,
                "one_client": one,
                "sample_64_streams_tokens_per_s": [round(before, 1), round(after, 1)],
                "sample_1_stream_tokens_per_s": round(sample_one, 1),
                "sample_64_vs_1": round(sample_tps / sample_one, 2),
                "batched_vs_one_client": round(many["tokens_per_s"] / max(one["tokens_per_s"], 1e-9), 2),
                "server_vs_sample": round(many["tokens_per_s"] / sample_tps, 3),
                "load_average": [round(x, 2) for x in uptime],
            }
            cases.append(case)
            print(f"{name}: {json.dumps(case)}", flush=True)

    result = {
        "benchmark": "serve",
        "device": "cpu",
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "step_slice_ms": args.slice_ms,
        "engine": args.engine,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "targets": {"batched_vs_one_client": ">= 8 (stories260K)", "server_vs_sample": ">= 0.8"},
        "cases": cases,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print("| model | clients | server tok/s | errors | TTFT p50 / p99 ms | event gap p50 / p99 ms | tokens/event "
          "| one client tok/s | batched / one | sample x64 tok/s | server / sample | sample x64 / x1 "
          "| CPU server (HTTP + engine) / loadgen |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        s, o = c["server"], c["one_client"]
        print(f"| {c['model']} | {c['clients']} | {s['tokens_per_s']:,.0f} | {s['errors']} | "
              f"{s['ttft_ms']['p50']} / {s['ttft_ms']['p99']} | {s['event_gap_ms']['p50']} / "
              f"{s['event_gap_ms']['p99']} | {s['tokens_per_event']} | {o['tokens_per_s']:,.0f} | "
              f"{c['batched_vs_one_client']}x | {statistics.mean(c['sample_64_streams_tokens_per_s']):,.0f} | "
              f"{c['server_vs_sample']:.0%} | {c['sample_64_vs_1']}x | {s['cpu_cores']['server']} ({s['cpu_cores']['server_http']} + "
              f"{s['cpu_cores']['server_engine']}) / {s['cpu_cores']['load_generator']} |")


if __name__ == "__main__":
    main()
