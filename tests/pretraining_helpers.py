"""Helpers for the pretraining tests: a small corpus, a small model config, run arguments.
The `prepared` fixture that uses them is in conftest.py."""

import json
import os

import numpy as np

from roberta_scratch.config import RobertaConfig
from roberta_scratch.pretrain import TrainArgs

WORDS = (
    "the cat sat on a mat while the dog ran to the red house and a bird sang in the old tree "
    "because every morning people walk past quiet gardens near the river"
).split()


def make_corpus(directory, n_docs=120, seed=0):
    """A few text files of blank-line separated documents, plus a Latin-1 file and an empty one."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    docs = []
    for _ in range(n_docs):
        sentences = [
            " ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(rng.integers(1, 6))
        ]
        docs.append(" ".join(sentences))
    half = len(docs) // 2
    with open(os.path.join(directory, "a.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs[:half]) + "\n")
    with open(os.path.join(directory, "b.jsonl"), "w", encoding="utf-8") as f:
        for d in docs[half:]:
            f.write(json.dumps({"text": d}) + "\n")
    with open(os.path.join(directory, "latin1.txt"), "wb") as f:
        f.write("Caf\u00e9 cr\u00e8me for the cat.\n".encode("latin-1"))
    open(os.path.join(directory, "empty.txt"), "w").close()
    return docs


def small_config(path, **overrides):
    cfg = RobertaConfig(
        vocab_size=400,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        **overrides,
    )
    cfg.save(str(path))
    return str(path)


def args_for(prepared, out, **overrides):
    kw = dict(
        data=str(prepared / "data"),
        out=str(out),
        config=small_config(prepared / "cfg.json"),
        steps=8,
        batch_size=4,
        grad_accum=2,
        lr=3e-3,
        warmup=2,
        log_every=1,
        eval_every=4,
        eval_blocks=8,
        save_every=4,
        progress=False,
        seed=0,
    )
    kw.update(overrides)
    return TrainArgs(**kw)


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]
