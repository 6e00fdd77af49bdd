"""Serving a model over HTTP: `roberta-scratch serve --model DIR`, FastAPI on uvicorn.

    engine.py    what a model folder serves, and each route's prepare -> run -> finish
    batcher.py   dynamic batching across requests, and back-pressure (429)
    schemas.py   every request and response as a typed model (/docs)
    metrics.py   Prometheus metrics
    app.py       the routes, the limits, the API key and the JSON access log
    server.py    uvicorn, --workers, SIGTERM

See docs/serving.md.
"""
