"""roberta-scratch serve: every route and every error path, on a real server on 127.0.0.1.

Servers run in-process (uvicorn in a thread, on a port the OS picks) or, for SIGTERM and
--workers, as the command itself in a subprocess. Every request loop is bounded in count, and
every request in time.
"""

import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from helpers import tiny_model_folder
from test_finetune import colour_squad, ner_rows, sentiment_rows

from roberta_scratch import (
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from roberta_scratch.checkpoints import converter
from roberta_scratch.deploy.prune import prune_heads
from roberta_scratch.deploy.quantize import quantize
from roberta_scratch.finetune.predict import predict
from roberta_scratch.machine import usable_cores
from roberta_scratch.probe import fill_mask
from roberta_scratch.serve.app import Settings, create_app
from roberta_scratch.serve.batcher import Batcher, QueueFull, pieces
from roberta_scratch.serve.engine import Engine
from roberta_scratch.tokenization.byte_level import load_tokenizer

uvicorn = pytest.importorskip("uvicorn")

TEXTS = [r["text"] for r in sentiment_rows(60, 3)] + [" ".join(r["tokens"]) for r in ner_rows(60, 3)]
TIMEOUT = 60  # seconds for any one request; a test that waits longer has found a hang


def task_folder(path, cls, info: dict, **config) -> str:
    """A random model of a task head with the finetune.json that names the task."""
    folder = tiny_model_folder(path, cls, texts=TEXTS * 3, vocab_size=400, max_positions=66, **config)
    with open(os.path.join(folder, "finetune.json"), "w") as f:
        json.dump(info, f)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    out = {
        "seq-cls": task_folder(
            root / "cls",
            RobertaForSequenceClassification,
            {"task": "seq-cls", "max_length": 64},
            num_labels=3,
            label_names=["bad", "good", "meh"],
        ),
        "token-cls": task_folder(
            root / "ner",
            RobertaForTokenClassification,
            {"task": "token-cls", "max_length": 64},
            num_labels=5,
            label_names=["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
        ),
        "qa": task_folder(
            root / "qa", RobertaForQuestionAnswering, {"task": "qa", "max_length": 48, "stride": 8, "version_2": True}
        ),
        "mlm": tiny_model_folder(root / "mlm", texts=TEXTS * 3, vocab_size=400, max_positions=66),
    }
    quantize(out["seq-cls"], str(root / "int8"))
    out["int8"] = str(root / "int8")
    return out


@contextlib.contextmanager
def serving(model: str, **settings):
    """A server on 127.0.0.1 and a free port, in this process; yields its URL and its app."""
    app = create_app(Settings(model=model, **settings), Engine.load(model))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_healthy(url)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def wait_healthy(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} never became healthy")


def post_all(url: str, route: str, bodies: list, headers=None) -> list[httpx.Response]:
    """POST every body at once (one connection each), and wait for every answer."""

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, headers=headers) as client:
            return await asyncio.gather(*(client.post(route, json=b) for b in bodies))

    return asyncio.run(go())


def metric(text: str, name: str, **labels) -> float:
    """The sum of a Prometheus series over the label values not given."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def in_random_groups(items: list, seed: int, largest: int = 5) -> list[list[int]]:
    """The indices of `items` shuffled into groups of 1..largest."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    groups = []
    while order:
        n = rng.randint(1, largest)
        groups.append(order[:n])
        order = order[n:]
    return groups


def served_in_groups(url: str, inputs: list, seed: int) -> list:
    """Every input through /predict, sent concurrently in random groups; results in input order."""
    groups = in_random_groups(inputs, seed)
    answers = post_all(url, "/predict", [{"inputs": [inputs[i] for i in g], "truncate": True} for g in groups])
    results = [None] * len(inputs)
    for g, r in zip(groups, answers, strict=True):
        assert r.status_code == 200, r.text
        for i, res in zip(g, r.json(), strict=True):
            results[i] = res
    return results


def assert_same_results(served, offline, tol=1e-5) -> None:
    """Equal JSON, numbers within fp32 rounding (batches of other shapes round differently)."""
    if isinstance(offline, dict):
        assert served.keys() == offline.keys()
        for k in offline:
            assert_same_results(served[k], offline[k], tol)
    elif isinstance(offline, list):
        assert len(served) == len(offline)
        for a, b in zip(served, offline, strict=True):
            assert_same_results(a, b, tol)
    elif isinstance(offline, float):
        assert math.isclose(served, offline, abs_tol=tol), (served, offline)
    else:
        assert served == offline


# --------------------------------------------------------------------------- the routes


def test_every_route_answers_with_its_documented_shape(models):
    with serving(models["seq-cls"]) as (url, _):
        c = httpx.Client(base_url=url, timeout=TIMEOUT)
        assert c.get("/health").json() == {"status": "ok"}
        info = c.get("/info").json()
        assert info["task"] == "seq-cls" and info["labels"] == ["bad", "good", "meh"]
        assert info["max_input_length"] == 64 and info["quantization"] is None and info["backend"] == "torch"
        assert info["routes"] == ["predict", "embed"]
        assert "swagger" in c.get("/docs").text.lower()
        spec = c.get("/openapi.json").json()
        for path in ("/predict", "/embed", "/v1/embeddings", "/fill-mask", "/tokenize", "/health", "/info", "/metrics"):
            assert path in spec["paths"], path
        for schema in ("PredictRequest", "ClassPrediction", "AnswerPrediction", "OpenAIEmbeddingResponse", "Info"):
            assert schema in spec["components"]["schemas"], schema
        r = c.post("/predict", json={"inputs": "the cat sat on the mat"})
        assert r.status_code == 200 and r.headers["x-request-id"]
        [one] = r.json()
        assert one["label"] in info["labels"] and math.isclose(sum(one["probabilities"].values()), 1, abs_tol=1e-5)
        pair = c.post("/predict", json={"inputs": [{"text": "a cat", "text_pair": "a dog"}]}).json()[0]
        assert pair["text_pair"] == "a dog"
        toks = c.post("/tokenize", json={"inputs": ["the cat sat"]}).json()[0]
        tok = load_tokenizer(models["seq-cls"])
        assert [t["id"] for t in toks] == tok.encode("the cat sat")
        assert toks[0]["special"] and toks[0]["start"] is None
        offsets = tok("the cat sat", return_offsets_mapping=True)["offset_mapping"]
        assert [(t["start"], t["stop"]) for t in toks[1:-1]] == [tuple(o) for o in offsets[1:-1]]
        assert "".join(tok.decode([t["id"]]) for t in toks[1:-1]) == "the cat sat"


@pytest.mark.parametrize("task", ["seq-cls", "token-cls", "qa", "int8"])
def test_results_equal_offline_predict_whatever_the_batching(models, task):
    """The same inputs sent concurrently in random groups, batched across requests, give what
    `roberta-scratch predict` gives (the int8 model too)."""
    if task == "qa":
        paragraphs = colour_squad(16, 4, n_facts=3, distractors=3)["data"][0]["paragraphs"]
        inputs = [{"question": p["qas"][0]["question"], "context": p["context"]} for p in paragraphs]
        lines = [json.dumps(i) for i in inputs]
    else:
        inputs = lines = TEXTS[::3] + ["the cat " * 40]  # the last one is longer than the model takes
    offline = predict(models[task], lines)
    # small batches, and a wait long enough that requests share them
    # Dynamic int8 quantizes each batch's activations with one scale, so that batchmates move the
    # last digits (offline predict's batch size does the same); float results agree to rounding.
    tol = 1e-3 if task == "int8" else 1e-5
    with serving(models[task], max_batch_tokens=300, max_wait_ms=20) as (url, _):
        for seed in (0, 1):
            assert_same_results(served_in_groups(url, inputs, seed), offline, tol)
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        quantization = httpx.get(f"{url}/info", timeout=TIMEOUT).json()["quantization"]
    assert (quantization or {}).get("method") == ("dynamic-int8" if task == "int8" else None)
    batches = metric(text, "roberta_batch_inputs_count")
    inputs_run = metric(text, "roberta_inputs_total", route="predict")
    assert inputs_run >= 2 * len(inputs) and batches < inputs_run / 2, "requests never shared a batch"


@pytest.mark.parametrize("form", ["pruned", "hugging face"])
def test_pruned_and_hugging_face_folders_serve_what_predict_gives(models, tmp_path, form):
    """The folders the deploy commands and `convert --to hf` write serve like any other."""
    folder = str(tmp_path / "model")
    if form == "pruned":
        shutil.copytree(models["seq-cls"], folder)  # the tokenizer and finetune.json come along
        model = RobertaForSequenceClassification.from_pretrained(models["seq-cls"])
        prune_heads(model, {0: [1]}).save_pretrained(folder)
    else:
        assert converter.convert(models["seq-cls"], folder, "hf") == 0
    offline = predict(folder, TEXTS[:12])
    with serving(folder, max_batch_tokens=300, max_wait_ms=20) as (url, _):
        info = httpx.get(f"{url}/info", timeout=TIMEOUT).json()
        assert_same_results(served_in_groups(url, TEXTS[:12], seed=2), offline)
    assert info["task"] == "seq-cls"
    assert info["pruned_heads"] == ({"0": [1]} if form == "pruned" else {})


def test_embeddings_pool_the_encoder_and_match_the_openai_client(models):
    openai = pytest.importorskip("openai")
    path = models["mlm"]
    tok, encoder = load_tokenizer(path), RobertaModel.from_pretrained(path).eval()
    texts = TEXTS[:6]

    def expected(text, pooling):
        with torch.no_grad():
            h = encoder(torch.tensor([tok.encode(text)])).last_hidden_state[0]
        return h[0] if pooling == "cls" else h.mean(0)

    with serving(path, max_wait_ms=20) as (url, _):
        for pooling in ("mean", "cls"):
            body = {"inputs": texts, "pooling": pooling, "normalize": False}
            got = torch.tensor(httpx.post(f"{url}/embed", json=body, timeout=TIMEOUT).json())
            want = torch.stack([expected(t, pooling) for t in texts])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        unit = torch.tensor(httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=TIMEOUT).json())
        torch.testing.assert_close(unit.norm(dim=-1), torch.ones(len(texts)))
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        for fmt in ("base64", "float"):  # the client asks for base64 unless told otherwise
            kw = {} if fmt == "base64" else {"encoding_format": "float"}
            res = client.embeddings.create(model="tiny", input=texts, **kw)
            assert [d.index for d in res.data] == list(range(len(texts)))
            torch.testing.assert_close(torch.tensor([d.embedding for d in res.data]), unit, atol=1e-6, rtol=0)
            assert res.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts) and res.model == "tiny"
        ids = client.embeddings.create(model="tiny", input=tok.encode(texts[0], add_special_tokens=False))
        torch.testing.assert_close(torch.tensor(ids.data[0].embedding), unit[0], atol=1e-6, rtol=0)
        with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
            client.embeddings.create(model="tiny", input="a cat", dimensions=7)


def test_fill_mask_equals_the_command_and_routes_refuse_what_a_model_lacks(models):
    texts = ["the <mask> sat on the mat", "the dog <mask> to the <mask>"]
    offline = fill_mask(models["mlm"], texts, top_k=3)
    with serving(models["mlm"]) as (url, _):
        got = httpx.post(f"{url}/fill-mask", json={"inputs": texts, "top_k": 3}, timeout=TIMEOUT).json()
        for g, o in zip(got, offline, strict=True):
            assert [[m["token"] for m in mask] for mask in g["masks"]] == [[t for t, _ in mask] for mask in o["masks"]]
            for mask, want in zip(g["masks"], o["masks"], strict=True):
                assert [m["score"] for m in mask] == pytest.approx([p for _, p in want], abs=1e-6)
        r = httpx.post(f"{url}/fill-mask", json={"inputs": "no mask here"}, timeout=TIMEOUT)
        assert r.status_code == 422 and "no <mask>" in r.json()["error"]
        for truncate in (False, True):  # a <mask> past the model's length: too long, not missing
            body = {"inputs": "the cat " * 40 + "<mask>", "truncate": truncate}
            r = httpx.post(f"{url}/fill-mask", json=body, timeout=TIMEOUT)
            assert r.status_code == 413 and "lies past the 64 tokens" in r.json()["error"], r.text
        r = httpx.post(f"{url}/predict", json={"inputs": "a cat"}, timeout=TIMEOUT)
        assert r.status_code == 400 and "no fine-tuned task head" in r.json()["error"]
    with serving(models["seq-cls"]) as (url, _):
        r = httpx.post(f"{url}/fill-mask", json={"inputs": "the <mask>"}, timeout=TIMEOUT)
        assert r.status_code == 400 and r.json()["error_type"] == "unsupported"


# --------------------------------------------------------------------------- limits and bad input


def bad_requests(url: str) -> list[tuple[str, dict, int, str]]:
    """(route, httpx keyword arguments, status, words the error must hold)."""
    return [
        ("/predict", {"content": b'{"inputs": ["a cat"'}, 422, "JSON"),
        ("/predict", {"content": b"\xff\xfe\x00garbage"}, 422, "JSON"),
        ("/predict", {"json": {"inputs": 7}}, 422, "inputs"),
        ("/predict", {"json": {"inputs": [{"text": 1}]}}, 422, "text"),
        ("/predict", {"json": {"inputs": "a cat", "surprise": 1}}, 422, "surprise"),
        ("/predict", {"json": {"texts": ["a cat"]}}, 422, "inputs"),
        ("/predict", {"json": {"inputs": ["a cat"] * 5}}, 413, "max-client-batch-size 4"),
        ("/predict", {"json": {"inputs": ["the cat " * 80]}}, 413, "64 tokens"),
        ("/predict", {"json": {"inputs": ["x" * 3000]}}, 413, "max-request-bytes 2000"),
        ("/embed", {"json": {"inputs": "a cat", "pooling": "max"}}, 422, "pooling"),
        ("/predict", {"content": b'{"inputs": NaN}'}, 422, "inputs"),
        ("/tokenize", {"json": {"inputs": ["a"] * 5}}, 413, "max-client-batch-size"),
        ("/v1/embeddings", {"json": {"input": [[1, 2], [10**9]]}}, 422, "out of range"),
    ]


def test_bad_requests_get_clear_errors_and_never_poison_later_batches(models):
    good = {"inputs": TEXTS[:4]}
    with serving(models["seq-cls"], max_client_batch_size=4, max_request_bytes=2000) as (url, _):
        c = httpx.Client(base_url=url, timeout=TIMEOUT, headers={"content-type": "application/json"})
        baseline = c.post("/predict", json=good).json()
        for route, kw, status, words in bad_requests(url):
            r = c.post(route, **kw)
            assert r.status_code == status, (route, kw, r.text)
            body = r.json()
            message = body["error"]["message"] if route.startswith("/v1/") else body["error"]
            assert words.lower() in message.lower(), (words, message)
            if status == 413 and not route.startswith("/v1/"):
                assert body["limit"], body  # names the limit it broke
            after = c.post("/predict", json=good)
            assert after.status_code == 200 and after.json() == baseline  # nothing poisoned
            assert all(math.isfinite(p) for r in after.json() for p in r["probabilities"].values())
        assert c.get("/health").status_code == 200


def test_a_full_queue_answers_429_at_once_with_retry_after(models):
    # one input at a time, each batch waiting 300 ms for company: the queue of 2 fills at once
    with serving(models["seq-cls"], max_queue=2, max_wait_ms=300) as (url, app):
        start = time.monotonic()
        answers = post_all(url, "/predict", [{"inputs": [t]} for t in TEXTS[:12]])
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
        for r in answers:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error_type"] == "overloaded"
        assert time.monotonic() - start < 10
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        assert metric(text, "roberta_requests_total", route="/predict", status="429") == codes.count(429)
        assert metric(text, "roberta_queue_depth") == 0


def test_an_api_key_is_required_when_set(models):
    with serving(models["seq-cls"], api_key="s3cret") as (url, _):
        c = httpx.Client(base_url=url, timeout=TIMEOUT)
        r = c.post("/predict", json={"inputs": "a cat"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            c.post("/predict", json={"inputs": "a cat"}, headers={"authorization": "Bearer wrong"}).status_code == 401
        )
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").status_code == 200  # the readiness probe needs no key
        ok = c.post("/predict", json={"inputs": "a cat"}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_health_is_503_while_the_server_is_not_ready(models):
    with serving(models["seq-cls"]) as (url, app):
        service = app.state.service
        for status in ("draining", "loading"):
            service.status = status
            r = httpx.get(f"{url}/health", timeout=TIMEOUT)
            assert r.status_code == 503 and r.json() == {"status": status}
        service.status = "draining"
        r = httpx.post(f"{url}/predict", json={"inputs": "a cat"}, timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["error_type"] == "unhealthy"
        service.status = "ok"
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200


def test_metrics_and_the_access_log_describe_each_request(models, caplog):
    with caplog.at_level("INFO", logger="roberta_scratch.serve.access"), serving(models["seq-cls"]) as (url, _):
        r = httpx.post(f"{url}/predict", json={"inputs": TEXTS[:3]}, headers={"x-request-id": "abc-1"}, timeout=TIMEOUT)
        assert r.headers["x-request-id"] == "abc-1"
        httpx.post(f"{url}/predict", json={"inputs": 1}, timeout=TIMEOUT)
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "roberta_scratch.serve.access"]
    mine = next(line for line in lines if line["id"] == "abc-1")
    assert mine["route"] == "/predict" and mine["status"] == 200 and mine["inputs"] == 3
    assert mine["tokens"] == sum(len(load_tokenizer(models["seq-cls"]).encode(t)) for t in TEXTS[:3])
    assert mine["queue_ms"] >= 0 and mine["compute_ms"] > 0 and mine["total_ms"] >= mine["compute_ms"]
    assert any(line["status"] == 422 for line in lines)
    assert metric(text, "roberta_requests_total", route="/predict", status="200") == 1
    assert metric(text, "roberta_requests_total", route="/predict", status="422") == 1
    assert metric(text, "roberta_request_duration_seconds_count", route="/predict") == 2
    assert metric(text, "roberta_inputs_total", route="predict") == 3 + 1  # and the warm-up's one
    assert metric(text, "roberta_batch_tokens_sum") > 0 and metric(text, "roberta_batch_inputs_count") >= 2
    assert "roberta_queue_depth" in text and "roberta_requests_in_flight" in text


# --------------------------------------------------------------------------- the batcher alone


def test_a_batch_is_sorted_and_cut_where_padding_would_waste():
    class It:
        def __init__(self, n):
            self.tokens = n

    got = pieces([It(n) for n in (100, 10, 12, 11, 98, 300, 13, 99)])
    assert [[i.tokens for i in p] for p in got] == [[10, 11, 12, 13], [98, 99, 100], [300]]
    assert [[i.tokens for i in p] for p in pieces([It(n) for n in (30, 40, 50)])] == [[30, 40, 50]]  # small: one


def test_the_batcher_fills_batches_by_tokens_and_survives_a_failing_batch():
    seen = []

    def run(route, features):
        seen.append([len(f["input_ids"]) for f in features])
        if any(f.get("boom") for f in features):
            raise FloatingPointError("NaN")
        return [len(f["input_ids"]) for f in features]

    async def go():
        b = Batcher(run, max_batch_tokens=40, max_wait_s=0.05, max_queue=6)
        b.start()
        feats = [{"input_ids": [0] * n} for n in (10, 10, 10, 10, 10)]
        items = await b.submit("predict", feats)
        assert [i.future.result() for i in items] == [10] * 5
        with pytest.raises(QueueFull) as full:
            await b.submit("predict", feats + feats)
        assert full.value.retry_after >= 1
        with pytest.raises(FloatingPointError):
            await b.submit("predict", [{"input_ids": [0] * 5, "boom": True}])
        again = await b.submit("embed", [{"input_ids": [0] * 3}])
        assert again[0].future.result() == 3 and b.alive
        await b.drain()

    asyncio.run(go())
    assert seen[:2] == [[10, 10, 10, 10], [10]]  # 4 x 10 fills 40 tokens; the fifth waits its turn


# --------------------------------------------------------------------------- the command


def start_command(model: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """`roberta-scratch serve` in a subprocess on a free port; (process, URL) once healthy."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roberta_scratch", "serve", "--model", model, "--port", "0", *flags],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that stop() reaches its workers too
    )
    line = proc.stderr.readline()
    m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not m:
        stop(proc)
        raise AssertionError(f"no address in {line!r}{proc.stderr.read()[:2000]}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    try:
        wait_healthy(m.group(1))
    except AssertionError:
        stop(proc)
        raise
    return proc, m.group(1)


def stop(proc: subprocess.Popen) -> None:
    """Kill a server command and every process it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(TIMEOUT)


def test_sigterm_finishes_every_accepted_request_and_exits_0(models):
    # 300 ms of batching wait keeps the requests in flight when SIGTERM arrives
    proc, url = start_command(models["seq-cls"], "--max-wait-ms", "300", "--max-batch-tokens", "100000")
    try:
        bodies = [{"inputs": TEXTS[i : i + 8]} for i in range(0, 64, 8)]

        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                sent = [asyncio.ensure_future(client.post("/predict", json=b)) for b in bodies]
                while True:  # until the server holds every request
                    text = (await client.get("/metrics")).text
                    if metric(text, "roberta_requests_in_flight") >= len(bodies) + 1:
                        break
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*sent)

        answers = asyncio.run(go())
        assert [r.status_code for r in answers] == [200] * len(bodies)
        assert [len(r.json()) for r in answers] == [len(b["inputs"]) for b in bodies]
        assert proc.wait(TIMEOUT) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)
    finally:
        stop(proc)


@pytest.mark.skipif(usable_cores() < 2, reason="two workers need two cores")
def test_workers_split_the_cores_and_share_their_metrics(models):
    proc, url = start_command(models["seq-cls"], "--workers", "2")
    try:
        c = httpx.Client(base_url=url, timeout=TIMEOUT)
        info = c.get("/info").json()
        assert info["workers"] == 2 and info["torch_threads"] == usable_cores() // 2
        deadline = time.monotonic() + TIMEOUT  # until both have warmed up (one input each)
        while metric(c.get("/metrics").text, "roberta_inputs_total", route="predict") < 2:
            assert time.monotonic() < deadline, "the second worker never started"
            time.sleep(0.1)
        answers = post_all(url, "/predict", [{"inputs": [t]} for t in TEXTS[:20]])
        assert all(r.status_code == 200 for r in answers)
        # any worker reports the sum over both (each ran a warm-up input of its own)
        text = c.get("/metrics").text
        assert metric(text, "roberta_requests_total", route="/predict", status="200") == 20
        assert metric(text, "roberta_inputs_total", route="predict") == 20 + 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        stop(proc)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--model", "/nonexistent/folder"], "/nonexistent/folder"),
        (["--workers", str(usable_cores() + 1)], "usable cores"),
        (["--max-batch-tokens", "0"], "--max-batch-tokens must be at least 1"),
        (["--graceful-timeout", "-1"], "--graceful-timeout must be 0 or more"),
    ],
)
def test_bad_settings_are_one_line_errors(models, flags, words):
    args = ["--model", models["seq-cls"], *flags] if flags[0] != "--model" else flags
    r = subprocess.run(
        [sys.executable, "-m", "roberta_scratch", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 1 and r.stderr.startswith("error:") and words in r.stderr, r.stderr
