"""HTTP serving on the CPU: `roberta-scratch serve` with dynamic batching, against one input per batch and
against transformers.pipeline behind FastAPI; latency at half load, overload, and int8.

    ROBERTA_REFERENCE_DIR=../shared/reference/roberta-base python -m benchmarks.bench_serve
        [--shape small] [--clients 1 8 32 128] [--requests 1000] [--time-cap 15] [--rounds 1]
        [--overload-seconds 20] [--max-queue 64] [--skip-pipeline] [--skip-overload] [--quick]

One random seq-cls model of the shape (2 labels, seeded), written in a temporary folder in every
form a server needs, with the real roberta-base tokenizer (copied from ROBERTA_REFERENCE_DIR into
that folder). Each server is its own process with the same torch threads (every usable core):

  dynamic          `roberta-scratch serve`, default batching (--max-batch-tokens 16384, --max-wait-ms 0)
  one per batch    the same with --max-batch-tokens 1: the batcher takes at least one input, so exactly one
  pipeline         transformers.pipeline("text-classification") in a FastAPI route on uvicorn, one call per
                   request (benchmarks/serve_pipeline_app.py), on the same weights as a Hugging Face folder
  dynamic int8     `roberta-scratch serve` on the `roberta-scratch quantize` folder
  (overload)       dynamic with --max-queue (64), for the overload section only

Inputs: cuts of 20-120 tokens (lengths drawn with a fixed seed, counted with the tokenizer, <s> and
</s> included) from the standard library's docstrings, whitespace collapsed; one input per request,
each request of a measurement a different text while the pool lasts. The load comes from this
process: httpx.AsyncClients over loopback, one connection per closed-loop client (see Clients for
why not one shared pool). A request unanswered after --timeout seconds is a hang.

Sections and their figures:
  closed loop      C clients (--clients), each sending its next request when the last is answered, until
                   --requests are sent or --time-cap seconds pass; the servers take turns for each C
                   (rotated each of --rounds). requests/s: 200 answers over the seconds from the first
                   request to the last answer (= inputs/s); tokens/s: their real tokens; p50/p95/p99:
                   latency of the 200 answers in ms; vs_dynamic: requests/s over the dynamic server's in
                   the same round; batch: mean inputs per model batch, busy: model time over wall time, and
                   model_ms_per_input: model time per input
                   (from the server's /metrics); client_cpu: this process's CPU seconds per second (the
                   load generator shares the cores with the servers).
  half load        open loop on the dynamic server: arrivals evenly spaced at half its requests/s at 32
                   clients, --requests of them (at most --time-cap seconds); latency from each request's
                   scheduled arrival (a late client counts against the server: lag_ms says by how much).
  overload         open loop at 4x saturation (the dynamic server's best closed-loop requests/s) for
                   --overload-seconds on the overload server: 200s, 429s (and whether each had
                   Retry-After), 5xx, hangs; accepted/s: 200s answered from the first one to the window's
                   end, per second, against saturation; recovery_s: from the window's end until GET /health
                   and a POST /predict both answer 200; health_*_ms: a /health probe every 0.25 s during
                   the window; server_*_ms: the server's own view (its access log: total_ms, queue_ms),
                   so that time spent before the app saw a request shows; offered/s: what the client sent.
  int8             the same model offline, in this process: the server's own batches (32 inputs cut by the
                   batcher's pieces(), and single inputs) through fp32 and int8, medians of interleaved
                   repeats; beside the served requests/s of dynamic and dynamic int8 at 32 clients.

Targets (the issue's), checked from the measurements at 32 clients (or the largest --clients):
dynamic >= 4x one per batch and >= 3x pipeline in requests/s; p99 <= 3x p50 at half load; under
overload no hang and no 5xx, the excess answered 429 with Retry-After, accepted/s within 10% of
saturation, and healthy again within 2 s; int8: the served speed-up keeps at least half of the offline
gain ((served - 1) >= 0.5 (offline - 1), our reading of "carries through"). Every server must exit 0
on SIGTERM. Results go to benchmarks/results/serve_cpu_<date>.json (--out-name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import httpx
import numpy as np
import torch

from benchmarks.common import print_table, time_interleaved, write_result
from roberta_scratch import RobertaConfig, RobertaForSequenceClassification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ["dynamic", "one per batch", "pipeline", "dynamic int8"]  # the closed loop's, in turn
LABELS = ["negative", "positive"]
MIN_TOKENS, MAX_TOKENS = 20, 120  # per input, <s> and </s> included
MAX_LENGTH = 128  # finetune.json's max_length: every input fits
POOL = 2048  # distinct texts at most (the docstrings long enough run out near 2,300)
WARMUP = 8  # requests before each measurement (not counted), at up to 8 at a time
OPEN_LOOP_CLIENTS = (256, 8)  # an open loop's clients and connections each: 2,048 in flight at most
REFERENCE_CLIENTS = 32  # the targets are at 32 clients
INT8_CARRY = 0.5  # the share of the offline int8 gain the served one must keep
STARTUP_S = 300  # bound on a server's start (load + warm-up), several starting at once on few cores
FULL = dict(shape="small", clients=[1, 8, 32, 128], requests=1000, time_cap=15.0, overload_seconds=20.0, max_queue=64)
QUICK = dict(shape="tiny", clients=[1, 8], requests=24, time_cap=5.0, overload_seconds=1.5, max_queue=8)


# --------------------------------------------------------------------------- models and inputs


def write_models(shape: str, root: str, ref: str) -> dict:
    """The folders the servers load: {"hf", "ours", "int8"}, one seeded random model."""
    import transformers

    from roberta_scratch.deploy.quantize import quantize

    cfg = RobertaConfig.preset(shape, num_labels=len(LABELS), label_names=LABELS)
    torch.manual_seed(0)
    hf = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**cfg.to_hf_dict())).eval()
    paths = {name: os.path.join(root, name) for name in ("hf", "ours", "int8")}
    hf.save_pretrained(paths["hf"])
    for name in ("vocab.json", "merges.txt"):  # copies in the temporary folder only
        shutil.copyfile(os.path.join(ref, name), os.path.join(paths["hf"], name))
    hf_tok = transformers.RobertaTokenizerFast.from_pretrained(paths["hf"])
    hf_tok.save_pretrained(paths["hf"])  # tokenizer.json: what pipeline() loads
    assert hf_tok("Hello world!")["input_ids"] == [0, 31414, 232, 328, 2], "not the roberta-base tokenizer"
    ours = RobertaForSequenceClassification.from_pretrained(paths["hf"], attention="sdpa").eval()
    ours.save_pretrained(paths["ours"])
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(ref, name), os.path.join(paths["ours"], name))
    with open(os.path.join(paths["ours"], "finetune.json"), "w") as f:
        json.dump({"task": "seq-cls", "max_length": MAX_LENGTH}, f)
    quantize(paths["ours"], paths["int8"])
    return paths


def make_inputs(tok, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Up to n (text, tokens): the start of a docstring cut after a drawn count of tokens."""
    from roberta_scratch.data.corpus import default_corpus

    rng = random.Random(seed)
    want, out = rng.randint(MIN_TOKENS, MAX_TOKENS), []
    for doc in default_corpus():
        text = " ".join(doc.split())
        enc = tok([text], return_offsets_mapping=True)
        ids, offsets = enc["input_ids"][0], enc["offset_mapping"][0]
        if len(ids) < want:
            continue
        cut = text[: offsets[want - 2][1]]  # through the (want - 2)th real token, after <s>
        tokens = len(tok.encode(cut))
        if MIN_TOKENS <= tokens <= MAX_TOKENS:
            out.append((cut, tokens))
            want = rng.randint(MIN_TOKENS, MAX_TOKENS)
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    argv: list
    log: str
    proc: subprocess.Popen | None = None
    url: str = ""
    info: dict = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.name != "pipeline"


def server_specs(paths: dict, args, threads: int, root: str) -> list[Server]:
    serve = [sys.executable, "-m", "roberta_scratch", "serve", "--port", "0", "--threads", str(threads)]
    specs = {
        "dynamic": [*serve, "--model", paths["ours"]],
        "one per batch": [*serve, "--model", paths["ours"], "--max-batch-tokens", "1"],
        "pipeline": [
            *(sys.executable, "-m", "benchmarks.serve_pipeline_app", "--port", "0", "--threads", str(threads)),
            *("--model", paths["hf"]),
        ],
        "dynamic int8": [*serve, "--model", paths["int8"]],
        "overload": [*serve, "--model", paths["ours"], "--max-queue", str(args.max_queue)],
    }
    skip = {"pipeline"} if args.skip_pipeline else set()
    skip |= {"overload"} if args.skip_overload else set()
    names = [n for n in specs if n not in skip]
    return [Server(n, specs[n], os.path.join(root, f"{n.replace(' ', '-')}.log")) for n in names]


def start(servers: list[Server]) -> None:
    """Every server at once (they load in parallel); the log file takes stderr (one access-log line
    per request: a pipe nobody reads would fill and stop the server)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    for s in servers:
        with open(s.log, "w") as log:
            s.proc = subprocess.Popen(s.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def wait_ready(s: Server, payload: dict) -> None:
    """The port from the `serving ... on http://HOST:PORT` line, then GET /health until 200 and one
    /predict answered with a label; RuntimeError with the log's tail when the server does not come up."""
    deadline = time.monotonic() + STARTUP_S
    while not s.url:
        found = re.search(r"serving .* on (http://[\w.:\[\]-]+:\d+) ", open(s.log).read())
        s.url = found.group(1) if found else ""
        _check_alive(s, deadline)
        time.sleep(0.1)
    with httpx.Client(base_url=s.url, timeout=10) as client:
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            _check_alive(s, deadline)
            time.sleep(0.2)
        answer = client.post("/predict", json=payload, timeout=60)
        if answer.status_code != 200 or answer.json()[0]["label"] not in LABELS:
            raise RuntimeError(f"{s.name}: /predict answered {answer.status_code} {answer.text[:300]}")
        s.info = client.get("/info").json() if s.ours else {"torch_threads": int(s.argv[s.argv.index("--threads") + 1])}


def _check_alive(s: Server, deadline: float) -> None:
    why = f"exited with {s.proc.returncode}" if s.proc.poll() is not None else None
    if why is None and time.monotonic() > deadline:
        why = f"was not ready after {STARTUP_S} s"
    if why:
        tail = open(s.log).read()[-3000:]
        raise RuntimeError(f"server {s.name!r} ({' '.join(s.argv)}) {why}; its log ends:\n{tail}")


def stop(servers: list[Server]) -> dict:
    """SIGTERM to each, then its exit code (a server still up after 60 s is killed: "killed")."""
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    codes = {}
    for s in servers:
        if s.proc is None:
            continue
        try:
            codes[s.name] = s.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
            codes[s.name] = "killed"
    return codes


# --------------------------------------------------------------------------- the load


@dataclass
class Result:
    status: int | str  # the HTTP status, "hang", or the client's exception's name
    latency: float  # seconds
    done: float  # the loop's clock when answered
    tokens: int
    retry_after: bool = False


async def one(client: httpx.AsyncClient, item: tuple, timeout: float, since: float | None = None) -> Result:
    """One POST /predict; latency from `since` (an open loop's scheduled arrival) or from now."""
    loop = asyncio.get_running_loop()
    start = loop.time() if since is None else since
    text, tokens = item
    try:
        r = await asyncio.wait_for(client.post("/predict", json={"inputs": text}), timeout)
        status, retry = r.status_code, "retry-after" in r.headers
    except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10's is not the builtin)
        status, retry = "hang", False
    except httpx.HTTPError as e:
        status, retry = type(e).__name__, False
    now = loop.time()
    return Result(status, now - start, now, tokens, retry)


class Clients:
    """n httpx.AsyncClients with a few connections each, taken in turn (`async with Clients(...) as c`).

    subtle: httpcore's pool does work in proportion to its connections times its waiting requests
    for every request (connection_pool._assign_requests_to_connections): one AsyncClient with 128
    connections spent 5.4 ms of CPU per request and topped out near 190 requests/s against a server
    that answers at once, where one connection per client costs about 1 ms. The load generator
    shares the cores with the servers, so its own cost must stay small and flat."""

    ssl_context = None  # one for all (httpx would read the CA bundle for each client: 36 ms)

    def __init__(self, url: str, n: int, connections: int = 1):
        if Clients.ssl_context is None:
            Clients.ssl_context = ssl.create_default_context()
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.all = [
            httpx.AsyncClient(base_url=url, limits=limits, timeout=None, verify=Clients.ssl_context)  # one() times
            for _ in range(n)
        ]

    def __getitem__(self, i: int) -> httpx.AsyncClient:
        return self.all[i % len(self.all)]

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(c.aclose() for c in self.all))


async def closed_loop(url: str, items: list, clients: int, requests: int, time_cap: float, timeout: float):
    """C clients, each sending its next request when the last is answered, until `requests` are
    sent or time_cap passes: (results, seconds from the start to the last answer)."""
    loop = asyncio.get_running_loop()
    results, order = [], iter(range(requests))
    async with Clients(url, clients) as pool:
        start = loop.time()

        async def client(k: int):
            for i in order:  # shared: each client takes the next request
                if loop.time() - start > time_cap:
                    return
                results.append(await one(pool[k], items[i % len(items)], timeout))

        await asyncio.gather(*(client(k) for k in range(clients)))
    return results, max((r.done for r in results), default=start) - start


async def open_loop(pool: Clients, items: list, rate: float, count: int, timeout: float, window: float | None = None):
    """Arrivals every 1/rate s, each a task on the next client of the pool; returns (tasks, start,
    end, lag) once the last is sent. With `window`, sending stops window s after the start: a
    client that fell behind does not catch up after it (offered/s then shows the rate it managed)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks, i, lag = [], 0, 0.0
    while i < count:
        now = loop.time()
        due = start + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        if window is not None and now - start >= window:
            break
        lag = max(lag, now - due)
        while i < count and start + i / rate <= now:
            tasks.append(asyncio.create_task(one(pool[i], items[i % len(items)], timeout, start + i / rate)))
            i += 1
    return tasks, start, max(loop.time(), start + len(tasks) / rate), lag


def stats(results: list[Result], seconds: float) -> dict:
    ok = [r for r in results if r.status == 200]
    errors = Counter(str(r.status) for r in results if r.status != 200)
    p50, p95, p99 = np.percentile([r.latency for r in ok], [50, 95, 99]) * 1000 if ok else [math.nan] * 3
    seconds = max(seconds, 1e-9)
    return {
        "sent": len(results),
        "ok": len(ok),
        "seconds": seconds,
        "requests_per_s": len(ok) / seconds,
        "inputs_per_s": len(ok) / seconds,  # one input per request
        "tokens_per_s": sum(r.tokens for r in ok) / seconds,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "errors": dict(errors),
        "hangs": errors.get("hang", 0),
        "5xx": sum(n for k, n in errors.items() if k.isdigit() and k.startswith("5")),
    }


async def batch_counters(url: str) -> dict:
    """The server's batch counters from /metrics: batches, inputs, model seconds."""
    names = {
        "roberta_batch_inputs_count": "batches",
        "roberta_batch_inputs_sum": "inputs",
        "roberta_batch_duration_seconds_sum": "model_s",
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        text = (await client.get("/metrics")).text
    return {names[k]: float(v) for k, _, v in (line.partition(" ") for line in text.splitlines()) if k in names}


# --------------------------------------------------------------------------- the sections


async def measure_one(s: Server, items: list, warm: list, clients: int, args) -> dict:
    await closed_loop(s.url, warm, min(clients, WARMUP), WARMUP, args.time_cap, args.timeout)
    before = await batch_counters(s.url) if s.ours else None
    cpu = time.process_time()
    results, seconds = await closed_loop(s.url, items, clients, args.requests, args.time_cap, args.timeout)
    row = {"section": "closed loop", "server": s.name, "clients": clients, **stats(results, seconds)}
    row["client_cpu"] = (time.process_time() - cpu) / max(seconds, 1e-9)
    if before is not None:
        after = await batch_counters(s.url)
        row.update(model_use(before, after, seconds))
    return row


def model_use(before: dict, after: dict, seconds: float) -> dict:
    """From two readings of batch_counters: mean inputs per batch, the model's busy fraction, and its
    time per input (which rises when something else takes the cores)."""
    batches, inputs = after["batches"] - before["batches"], after["inputs"] - before["inputs"]
    model_s = after["model_s"] - before["model_s"]
    return {
        "batch": inputs / batches if batches else math.nan,
        "busy": model_s / max(seconds, 1e-9),
        "model_ms_per_input": 1000 * model_s / inputs if inputs else math.nan,
    }


async def measure_closed(servers: list[Server], items: list, warm: list, args) -> list[dict]:
    """Each client count, each round: every server in turn (the order rotated each round), on the
    same texts; ratios to the dynamic server in the same round."""
    rows, measured = [], [s for s in servers if s.name != "overload"]
    for c_index, clients in enumerate(args.clients):
        for r in range(args.rounds):
            offset = (c_index * args.rounds + r) * args.requests
            texts = items[offset % len(items) :] + items[: offset % len(items)]
            turn = measured[r % len(measured) :] + measured[: r % len(measured)]
            got = {s.name: await measure_one(s, texts, warm, clients, args) for s in turn}
            base = got["dynamic"]["requests_per_s"]
            for s in measured:
                got[s.name].update(round=r + 1, vs_dynamic=got[s.name]["requests_per_s"] / max(base, 1e-9))
                rows.append(got[s.name])
            said = ", ".join(f"{n} {g['requests_per_s']:.1f} req/s ({g['vs_dynamic']:.2f}x)" for n, g in got.items())
            print(f"{clients} client(s), round {r + 1}: {said}", flush=True)
    return rows


async def measure_half_load(s: Server, items: list, rate: float, args) -> dict:
    count = max(1, min(args.requests, math.ceil(rate * args.time_cap)))
    async with Clients(s.url, *OPEN_LOOP_CLIENTS) as pool:
        tasks, start, _, lag = await open_loop(pool, items, rate, count, args.timeout)
        results = await asyncio.gather(*tasks)
    row = {"section": "half load", "server": s.name, "rate": rate}
    row.update(stats(results, max(r.done for r in results) - start))
    return {**row, "p99_over_p50": row["p99_ms"] / row["p50_ms"], "lag_ms": 1000 * lag}


async def measure_overload(s: Server, items: list, saturation: float, args) -> dict:
    """4x saturation for the window, a /health probe beside it, then the recovery. accepted/s: the
    200s answered between the first 200 and the window's end, per second."""
    rate, window = 4 * saturation, args.overload_seconds
    logged = len(open(s.log).readlines())
    async with Clients(s.url, *OPEN_LOOP_CLIENTS) as pool:
        before = await batch_counters(s.url)
        cpu = time.process_time()
        probe = asyncio.create_task(health_probe(s.url, window, args.timeout))
        tasks, start, end, lag = await open_loop(pool, items, rate, math.ceil(rate * window), args.timeout, window)
        cpu = time.process_time() - cpu
        use = model_use(before, await batch_counters(s.url), end - start)
        recovery = await recovery_time(s.url, items[0], end, args.timeout)  # while the backlog drains
        results = await asyncio.gather(*tasks)
        health = await probe
    row = {"section": "overload", "server": s.name, "rate": rate, **stats(results, end - start)}
    for key in ("requests_per_s", "inputs_per_s", "tokens_per_s"):  # late answers in, over the window: misleading
        del row[key]
    refused = [r for r in results if r.status == 429]
    # From the first answer (the first batch has to run before any) to the window's end
    first = min((r.done for r in results if r.status == 200), default=end)
    accepted = sum(1 for r in results if r.status == 200 and r.done <= end) / max(end - first, 1e-9)
    return {
        **row,
        "offered_per_s": len(results) / (end - start),
        "lag_ms": 1000 * lag,
        "client_cpu": cpu / (end - start),
        "429": len(refused),
        "429_with_retry_after": sum(r.retry_after for r in refused),
        "accepted_per_s": accepted,
        "saturation_per_s": saturation,
        "accepted_vs_saturation": accepted / saturation,
        "recovery_s": recovery,
        **use,
        "health_p50_ms": 1000 * median(health),
        "health_max_ms": 1000 * max(health, default=math.nan),
        **server_side(s.log, logged),
    }


async def health_probe(url: str, seconds: float, timeout: float) -> list[float]:
    """GET /health every 0.25 s for `seconds` on a connection of its own: each answer's latency (a
    readiness probe's view of the overload; a timeout counts as `timeout`)."""
    loop = asyncio.get_running_loop()
    times, end = [], loop.time() + seconds
    async with Clients(url, 1) as pool:
        while loop.time() < end:
            sent = loop.time()
            try:
                await asyncio.wait_for(pool[0].get("/health"), timeout)
            except (asyncio.TimeoutError, httpx.HTTPError):  # noqa: UP041
                pass
            times.append(loop.time() - sent)
            await asyncio.sleep(max(0.0, 0.25 - times[-1]))
    return times


def server_side(log: str, skip: int) -> dict:
    """p50 and p99 of the time the server itself saw (its access log's total_ms and queue_ms) for
    the /predict lines after the first `skip`: the rest of a client's latency was spent before
    the app got the request (connecting, the server's accept and parse, the client's own queue)."""
    lines = [json.loads(line) for line in open(log).readlines()[skip:] if line.startswith('{"time"')]
    out = {}
    for status, name in ((200, "200"), (429, "429")):
        for key in ("total_ms", "queue_ms") if status == 200 else ("total_ms",):
            values = [line[key] for line in lines if line["route"] == "/predict" and line["status"] == status]
            for q in (50, 99):
                out[f"server_{name}_{key[:-3]}_p{q}_ms"] = float(np.percentile(values, q)) if values else math.nan
    return out


async def recovery_time(url: str, item: tuple, since: float, timeout: float, limit: float = 60.0):
    """Seconds from `since` until GET /health and then POST /predict both answer 200 (a fresh
    connection, as a load balancer's probe); None if not within `limit`."""
    loop = asyncio.get_running_loop()
    async with Clients(url, 1) as pool:
        while loop.time() - since < limit:
            try:
                health = await asyncio.wait_for(pool[0].get("/health"), timeout)
                if health.status_code == 200 and (await one(pool[0], item, timeout)).status == 200:
                    return loop.time() - since
            except (asyncio.TimeoutError, httpx.HTTPError):  # noqa: UP041
                pass
            await asyncio.sleep(0.05)
    return None


async def measure(servers: list[Server], items: list, warm: list, args) -> dict:
    by_name = {s.name: s for s in servers}
    closed = await measure_closed(servers, items, warm, args)
    ref = REFERENCE_CLIENTS if REFERENCE_CLIENTS in args.clients else max(args.clients)
    dynamic_at_ref = median(r["requests_per_s"] for r in closed if r["server"] == "dynamic" and r["clients"] == ref)
    saturation = max(
        median(r["requests_per_s"] for r in closed if r["server"] == "dynamic" and r["clients"] == c)
        for c in args.clients
    )
    half = await measure_half_load(by_name["dynamic"], items, dynamic_at_ref / 2, args)
    print(f"half load ({half['rate']:.1f} req/s): p50 {half['p50_ms']:.1f} ms, p99 {half['p99_ms']:.1f} ms", flush=True)
    overload = None
    if "overload" in by_name:
        overload = await measure_overload(by_name["overload"], items, saturation, args)
        print(f"overload: {overload['errors']}, recovery {overload['recovery_s']} s", flush=True)
    return {"closed": closed, "half": half, "overload": overload, "reference_clients": ref}


def median(values) -> float:
    values = sorted(values)
    return float(np.median(values)) if values else math.nan


def offline_int8(paths: dict, tok, texts: list[str], repeats: int) -> dict:
    """fp32 against int8 in this process (no HTTP), on the batches the server would run: groups of
    32 inputs cut by the batcher's pieces(), and single inputs; inputs per second and the speed-up."""
    models = {
        form: RobertaForSequenceClassification.from_pretrained(paths[folder], attention="sdpa").eval()
        for form, folder in (("fp32", "ours"), ("int8", "int8"))
    }
    ids = tok(texts)["input_ids"]
    out = {}
    for name, size, count in (("batch_32", REFERENCE_CLIENTS, 4 * REFERENCE_CLIENTS), ("batch_1", 1, 16)):
        batches = server_batches(ids[:count], size, tok.pad_token_id)
        t = time_interleaved({form: partial(run_batches, m, batches) for form, m in models.items()}, repeats)
        n = len(ids[:count])
        out[name] = {"fp32_inputs_per_s": n / t["fp32"], "int8_inputs_per_s": n / t["int8"]}
        out[name]["speedup"] = t["fp32"] / t["int8"]
    return out


def server_batches(ids: list, size: int, pad: int) -> list:
    """Groups of `size` inputs cut as the server's batcher cuts them (pieces()), padded: (ids, mask)."""
    from roberta_scratch.finetune.tasks import pad_rows
    from roberta_scratch.serve.batcher import Item, pieces

    out = []
    for g in range(0, len(ids), size):
        for piece in pieces([Item("predict", {"input_ids": x}, None) for x in ids[g : g + size]]):
            batch = pad_rows([i.feature["input_ids"] for i in piece], pad)
            out.append((batch, batch.ne(pad).long()))
    return out


def run_batches(model, batches: list) -> None:
    with torch.inference_mode():
        for ids, mask in batches:
            model(ids, attention_mask=mask)


# --------------------------------------------------------------------------- targets and the report


def check_targets(m: dict, offline: dict, codes: dict) -> list[dict]:
    """The issue's targets, each met or missed by the measurements (None: that part was skipped)."""
    ref, closed = m["reference_clients"], m["closed"]

    def dynamic_over(server: str) -> float:  # per round, then the median
        return median(1 / r["vs_dynamic"] for r in closed if r["server"] == server and r["clients"] == ref)

    rows = []

    def target(what: str, measured, need: str, met) -> None:
        rows.append({"target": what, "measured": measured, "need": need, "met": met})

    one, pipe = dynamic_over("one per batch"), dynamic_over("pipeline")
    target(f"requests/s at {ref} clients, dynamic over one per batch", one, ">= 4x", one >= 4)
    target(
        f"requests/s at {ref} clients, dynamic over pipeline", pipe, ">= 3x", None if math.isnan(pipe) else pipe >= 3
    )
    half = m["half"]
    target("p99 / p50 at half load", half["p99_over_p50"], "<= 3", half["p99_over_p50"] <= 3)
    o = m["overload"]
    if o is None:
        target("overload", None, "(--skip-overload)", None)
    else:
        bad = o["sent"] - o["ok"] - o["429"]  # hangs, 5xx, any other status, client errors
        target("overload: hangs + 5xx + anything but 200 or 429", bad, "0", bad == 0)
        target(
            "overload: 429s, and those without Retry-After",
            [o["429"], o["429"] - o["429_with_retry_after"]],
            "> 0, 0",
            o["429"] > 0 and o["429"] == o["429_with_retry_after"],
        )
        target(
            "overload: accepted/s over saturation",
            o["accepted_vs_saturation"],
            ">= 0.9",
            o["accepted_vs_saturation"] >= 0.9,
        )
        target(
            "overload: seconds until healthy again",
            o["recovery_s"],
            "<= 2",
            o["recovery_s"] is not None and o["recovery_s"] <= 2,
        )
    served = 1 / dynamic_over("dynamic int8")
    gain = offline["batch_32"]["speedup"]
    target(
        f"int8 speed-up served at {ref} clients (offline at batch 32: {gain:.2f}x)",
        served,
        f"- 1 >= {INT8_CARRY} x (offline - 1)",
        served - 1 >= INT8_CARRY * (gain - 1),
    )
    target("every server exits 0 on SIGTERM", codes, "all 0", all(c == 0 for c in codes.values()))
    return rows


def report(m: dict, offline: dict, targets: list[dict]) -> list[dict]:
    """Print the tables; the JSON's rows."""
    ref, closed = m["reference_clients"], m["closed"]
    shown = [{**r, "errors": " ".join(f"{k}:{n}" for k, n in r["errors"].items()) or "-"} for r in closed]
    columns = ["clients", "round", "server", "requests_per_s", "vs_dynamic", "tokens_per_s"]
    print_table(
        shown, [*columns, "p50_ms", "p95_ms", "p99_ms", "batch", "busy", "model_ms_per_input", "client_cpu", "errors"]
    )
    if max(r["round"] for r in closed) > 1:
        print("\nmedians over the rounds:")
        print_table(medians(closed), ["clients", "server", "requests_per_s", "vs_dynamic", "p50_ms", "p99_ms"])
    rows = [*closed, m["half"]]
    print()
    print_table(
        [m["half"]], ["section", "rate", "requests_per_s", "p50_ms", "p95_ms", "p99_ms", "p99_over_p50", "lag_ms"]
    )
    if m["overload"] is not None:
        o = m["overload"]
        rows.append(o)
        print()
        columns = ["rate", "offered_per_s", "client_cpu", "lag_ms", "ok", "429", "429_with_retry_after", "5xx"]
        print_table([o], ["section", *columns, "hangs", "accepted_per_s", "saturation_per_s", "accepted_vs_saturation"])
        print()
        print()
        print_table([o], ["batch", "busy", "model_ms_per_input"])
        columns = ["recovery_s", "health_p50_ms", "health_max_ms", "p50_ms", "p99_ms", "server_200_total_p50_ms"]
        print_table([o], [*columns, "server_200_total_p99_ms", "server_200_queue_p99_ms", "server_429_total_p99_ms"])

    def served(name: str) -> float:
        return median(r["requests_per_s"] for r in closed if r["server"] == name and r["clients"] == ref)

    int8 = {"section": "int8", "clients": ref, "served_fp32_per_s": served("dynamic")}
    int8["served_int8_per_s"] = served("dynamic int8")
    int8["served_speedup"] = int8["served_int8_per_s"] / int8["served_fp32_per_s"]
    for batch, figures in offline.items():
        int8.update({f"offline_{batch}_{k}": v for k, v in figures.items()})
    rows.append(int8)
    print()
    print_table([int8], [k for k in int8 if k != "section"])
    print()
    print_table([{**t, "met": {True: "met", False: "MISSED", None: "-"}[t["met"]]} for t in targets], list(targets[0]))
    return rows


def medians(closed: list[dict]) -> list[dict]:
    """Per client count and server, the median of each figure over the rounds."""
    keys = sorted({(r["clients"], r["server"]) for r in closed}, key=lambda k: (k[0], SERVERS.index(k[1])))
    figures = ["requests_per_s", "vs_dynamic", "p50_ms", "p99_ms"]
    return [
        {"clients": c, "server": name}
        | {f: median(r[f] for r in closed if (r["clients"], r["server"]) == (c, name)) for f in figures}
        for c, name in keys
    ]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["tiny", "small", "base"], help="model preset (default small; tiny with --quick)")
    p.add_argument("--clients", type=int, nargs="+", help="concurrent clients of the closed loop (default 1 8 32 128)")
    p.add_argument("--requests", type=int, help="requests per measurement (default 1000)")
    p.add_argument("--time-cap", type=float, help="seconds a closed-loop measurement sends for at most (default 15)")
    p.add_argument("--rounds", type=int, default=1, help="closed-loop rounds of every server (default 1)")
    p.add_argument("--overload-seconds", type=float, help="how long the overload lasts (default 20)")
    p.add_argument("--max-queue", type=int, help="the overload server's --max-queue (default 64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as a hang")
    p.add_argument("--skip-pipeline", action="store_true", help="no transformers.pipeline server")
    p.add_argument("--skip-overload", action="store_true", help="no overload section")
    p.add_argument("--quick", action="store_true", help="tiny shape, few requests, short overload: a smoke run")
    p.add_argument("--out-name", default="serve_cpu", help="results file name, before the date (default serve_cpu)")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def run(args, ref: str, root: str, threads: int) -> tuple:
    """Build, time int8 offline, start the servers, measure, stop them: (measured, offline, exit codes, inputs)."""
    from roberta_scratch.tokenization.byte_level import load_tokenizer

    print(f"writing the {args.shape} model in every form to {root} ...", flush=True)
    paths = write_models(args.shape, root, ref)
    tok = load_tokenizer(paths["ours"])
    inputs = make_inputs(tok, min(POOL, max(args.requests, 4 * REFERENCE_CLIENTS)) + WARMUP)
    warm, items = inputs[:WARMUP], inputs[WARMUP:]
    offline = offline_int8(paths, tok, [text for text, _ in items], repeats=1 if args.quick else 5)
    print(f"offline int8 speed-up: {offline['batch_32']['speedup']:.2f}x at batch 32", flush=True)
    servers = server_specs(paths, args, threads, root)
    try:
        start(servers)
        for s in servers:
            wait_ready(s, {"inputs": warm[0][0]})
            print(f"{s.name}: {s.url}", flush=True)
        m = run_async(measure(servers, items, warm, args))
    finally:
        codes = stop(servers)
    m["servers"] = {s.name: {"command": " ".join(s.argv).replace(root, "<tmp>"), "info": s.info} for s in servers}
    return m, offline, codes, inputs


def run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)  # the load generator's own overhead, lower


def raise_open_files_limit() -> None:
    """Thousands of connections in flight under overload: the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv=None) -> str:
    from roberta_scratch.machine import usable_cores

    args = parse_args(argv)
    ref = os.environ.get("ROBERTA_REFERENCE_DIR")
    if not ref or not os.path.isfile(os.path.join(ref, "vocab.json")):
        sys.exit(
            "bench_serve needs the real roberta-base tokenizer: set ROBERTA_REFERENCE_DIR to the folder with its "
            "vocab.json and merges.txt (../shared/reference/roberta-base)"
        )
    threads = usable_cores()
    torch.set_num_threads(threads)
    raise_open_files_limit()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as root:
        m, offline, codes, inputs = run(args, ref, root, threads)
    targets = check_targets(m, offline, codes)
    print()
    rows = report(m, offline, targets)
    lengths = [n for _, n in inputs]
    extra = {
        "shape": args.shape,
        "torch_threads_per_server": threads,
        "client": "httpx.AsyncClients in the benchmark process (uvloop), loopback, sharing the servers' cores",
        "inputs": {
            "count": len(inputs),
            "min_tokens": min(lengths),
            "max_tokens": max(lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "source": "stdlib docstrings, roberta-base tokenizer",
        },
        "settings": {k: v for k, v in vars(args).items()},
        "reference_clients": m["reference_clients"],
        "servers": m["servers"],
        "exit_codes": codes,
        "offline_int8": offline,
        "targets": targets,
    }
    path = write_result(args.out_name, rows, extra)
    print(f"\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
