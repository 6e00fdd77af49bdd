"""`make demo` / `roberta-scratch demo`: the whole pretraining pipeline in a few CPU minutes.

1. train a byte-level BPE tokenizer on the embedded default corpus (the standard
   library's docstrings: real English prose, nothing downloaded);
2. prepare it into packed shards;
3. pretrain a `tiny` RoBERTa with dynamic masking, printing the held-out loss,
   perplexity and masked-token accuracy at the start and the end;
4. fill in <mask> in a few sentences with the trained model.

Every step is skipped when its output already exists, so a second run is quick
(delete the output directory to start over).
"""
from __future__ import annotations

import json
import math
import os

SENTENCES = (
    "Return a new <mask> containing the items of the iterable.",
    "Raise a ValueError if the <mask> is not found.",
    "This module provides <mask> for working with files and directories.",
)


def run(out: str = "runs/demo", vocab_size: int = 4096, steps: int = 4000, seq_len: int = 128,
        batch_size: int = 16, lr: float = 1e-3) -> int:
    from .corpus import default_corpus
    from .data import prepare
    from .pretrain import TrainArgs, pretrain
    from .probe import fill_mask, print_fill_mask
    from .tokenizer import ByteLevelBPETokenizer

    tok_dir, data_dir, run_dir = (os.path.join(out, d) for d in ("tokenizer", "data", "run"))
    if not os.path.isfile(os.path.join(tok_dir, "vocab.json")):
        print(f"== 1/4 training a {vocab_size}-token byte-level BPE on the standard library's docstrings")
        ByteLevelBPETokenizer.train(default_corpus(), vocab_size=vocab_size).save_pretrained(tok_dir)
    print("== 2/4 preparing the data")
    prepare(None, tok_dir, data_dir, seq_len=seq_len, val_fraction=0.02)
    print(f"== 3/4 pretraining a tiny RoBERTa for {steps} steps of {batch_size} x {seq_len} tokens "
          f"(chance level: ln({vocab_size}) = {math.log(vocab_size):.2f})")
    code = pretrain(TrainArgs(data=data_dir, out=run_dir, config="tiny", steps=steps, batch_size=batch_size,
                              lr=lr, warmup=steps // 10, eval_every=steps // 2, save_every=steps // 4,
                              log_every=10, resume=True))
    if code != 0:
        return code
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f if '"val_loss"' in line]
    first, last = evals[0], evals[-1]
    print(f"held-out loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}, perplexity {first['val_ppl']:.0f} -> "
          f"{last['val_ppl']:.1f}, masked accuracy {first['val_acc']:.1%} -> {last['val_acc']:.1%}")
    print("== 4/4 fill-mask with the trained model")
    print_fill_mask(fill_mask(os.path.join(run_dir, "model"), list(SENTENCES)))
    return 0
