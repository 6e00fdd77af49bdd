"""`roberta-scratch serve`: uvicorn running the app, one process or --workers N.

    roberta-scratch serve --model runs/sst2/best --port 8080

The model is loaded (and so checked) before the port opens, so a bad folder is a one-line
error, not a crash loop. Each worker has its own model and torch threads, and workers x threads
never exceeds the usable cores: more would make the workers fight over them. SIGTERM stops
accepting connections, lets every accepted request finish, and exits 0.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import tempfile

import uvicorn

from ..machine import usable_cores
from .app import Settings, create_app
from .engine import Engine

SETTINGS_ENV = "ROBERTA_SCRATCH_SERVE_SETTINGS"  # how the parent hands its settings to --workers
API_KEY_ENV = "ROBERTA_SCRATCH_API_KEY"  # the key without putting it on the command line (ps shows that)


def check_settings(s: Settings) -> Settings:
    """The settings with threads and the key filled in; ValueError names a bad one."""
    for name in ("max_batch_tokens", "max_queue", "max_client_batch_size", "max_request_bytes", "workers"):
        if getattr(s, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
    for name in ("max_wait_ms", "graceful_timeout"):
        if not getattr(s, name) >= 0:  # NaN too
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(s, name)}")
    cores = usable_cores()
    threads = s.threads or max(1, cores // s.workers)
    if s.workers * threads > cores:
        raise ValueError(
            f"--workers {s.workers} x {threads} torch thread(s) each is more than the {cores} usable cores: "
            "the workers would fight over them; use fewer workers (or --threads)"
        )
    return dataclasses.replace(s, threads=threads, api_key=s.api_key or os.environ.get(API_KEY_ENV) or None)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def setup_logging() -> None:
    """The access log as bare JSON lines on stderr, one per request; the server's notes beside it."""
    logger = logging.getLogger("roberta_scratch.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(settings: Settings) -> int:
    s = check_settings(settings)
    if not is_loopback(s.host) and not s.api_key:
        print(
            f"warning: listening on {s.host} without --api-key: anyone who can reach this port can use the model",
            file=sys.stderr,
        )
    setup_logging()
    import torch

    torch.set_num_threads(s.threads)
    engine = Engine.load(s.model, s.device, trust_code=s.trust_code, pooling=s.pooling)
    common = dict(
        host=s.host,
        port=s.port,
        access_log=False,  # ours is the JSON one (app.Gate)
        log_level="warning",
        timeout_graceful_shutdown=s.graceful_timeout,
        lifespan="on",
    )
    if s.workers == 1:
        config = uvicorn.Config(create_app(s, engine), **common)
    else:
        del engine  # each worker loads its own; this one only proved the folder loads
        config = uvicorn.Config("roberta_scratch.serve.server:app_from_env", factory=True, workers=s.workers, **common)
    sock = config.bind_socket()
    port = sock.getsockname()[1]
    print(
        f"serving {s.model} on http://{s.host}:{port} ({s.workers} worker(s) x {s.threads} thread(s)); "
        f"API docs at /docs, readiness at /health",
        file=sys.stderr,
        flush=True,
    )
    if s.workers == 1:
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; ignoring it
        # then lets the command exit 0, as an orchestrator expects of a clean stop.
        signal.signal(signal.SIGTERM, lambda sig, frame: None)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        return 0 if server.started else 1
    return _run_workers(config, sock, s)


def _run_workers(config: uvicorn.Config, sock, s: Settings) -> int:
    from uvicorn.supervisors import Multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="roberta-serve-metrics-")  # Prometheus' multiprocess files
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(s))
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)  # made by mkdtemp above, so ours to delete
    return 0


def app_from_env():
    """The app of one --workers process, from the settings its parent left in the environment."""
    setup_logging()
    return create_app(Settings(**json.loads(os.environ[SETTINGS_ENV])))
