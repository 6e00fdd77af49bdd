"""The baseline bench_serve compares `roberta-scratch serve` with: transformers.pipeline behind FastAPI,
the few lines a user writes to put a Hugging Face model on HTTP.

    python -m benchmarks.serve_pipeline_app --model HF_DIR --port 0 --threads 2

POST /predict {"inputs": "a text"} answers the pipeline's [{"label": ..., "score": ...}] for it;
GET /health answers 200 once the pipeline is loaded. Each request is one pipeline call: there
is no batching across requests. The calls take turns (a lock): the model has all the torch
threads, as our server's does, and parallel calls would only fight over them (40 of FastAPI's
worker threads, each with its own team of torch threads, on a few cores). The first stderr line
has the form `roberta-scratch serve` prints, so that bench_serve reads the port the same way.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: str | list[str]


def create_app(model: str) -> FastAPI:
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model, device="cpu")
    pipe("Warm up.")  # lazy initialisation is not the first client's cost
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/predict")
    def predict(body: PredictRequest):  # a plain def: FastAPI runs it on a worker thread
        with lock:
            return pipe(body.inputs)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a Hugging Face folder with a sequence-classification head")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (the first line says which)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    app = create_app(args.model)
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    sock = config.bind_socket()
    port = sock.getsockname()[1]
    print(
        f"serving {args.model} on http://{args.host}:{port} (transformers.pipeline, {args.threads} thread(s))",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises the SIGTERM it handled once it has shut down; ignored then, the exit is 0.
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
