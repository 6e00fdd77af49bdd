"""Size a study preset: train its baseline arm once with some settings changed, and record how far
it gets (held-out masked accuracy at each evaluation) and how long it takes.

    python -m benchmarks.probe_study --name lr4e-3 lr=4e-3
    python -m benchmarks.probe_study --name mask30 --mlm 0.3 steps=3000
    python -m benchmarks.probe_study --name wide hidden_size=256 num_attention_heads=4 intermediate_size=1024

KEY=VALUE pairs replace the `cpu` preset's fields (steps, lr, batch_size, seq_len, vocab_size,
max_documents (none: every document), ...) or its model's (hidden_size, num_attention_heads, ..., dropout for both
dropouts). The data is prepared once per (vocabulary, block length, documents) under
benchmarks/.cache/probe-study/, the run goes to .../runs/NAME, and the result is appended to
benchmarks/results/study_probe_<date>.json. This is how the `cpu` preset's numbers in
docs/study.md were found: run one probe at a time, nothing beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from roberta_scratch.pretrain import pretrain
from roberta_scratch.study.runner import PRESETS, Arm, Study

from .common import write_result

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "probe-study")
MODEL_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def probe_preset(overrides: dict[str, str]):
    """The `cpu` preset with KEY=VALUE overrides, each parsed as its field's type."""
    base = PRESETS["cpu"]
    model = dict(base.model)
    for key in MODEL_FIELDS:
        if key in overrides:
            model[key] = int(overrides.pop(key))
    if "dropout" in overrides:
        model["hidden_dropout_prob"] = model["attention_probs_dropout_prob"] = float(overrides.pop("dropout"))
    types = {f.name: f.type for f in dataclasses.fields(base)}
    fields = {}
    for key, value in overrides.items():
        if key not in types:
            raise SystemExit(f"error: {key} is neither a preset field nor one of {', '.join(MODEL_FIELDS)}, dropout")
        if not any(t in str(types[key]) for t in ("int", "float")):
            raise SystemExit(f"error: {key} is a {types[key]}: only number fields can be changed here")
        if value.lower() == "none":
            fields[key] = None
        else:
            fields[key] = float(value) if "float" in str(types[key]) else int(value)
    return dataclasses.replace(base, model=model, **fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the probe's run folder and its row's name")
    parser.add_argument("--mlm", type=float, default=0.15, help="training masking rate (held out: 15%%)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dict(o.split("=", 1) for o in args.overrides)
    preset = probe_preset(dict(overrides))
    data = os.path.join(CACHE, f"v{preset.vocab_size}-L{preset.seq_len}-d{preset.max_documents}")
    os.makedirs(data, exist_ok=True)
    study = Study(data, preset, None, "text", False, False)
    study.threads = args.threads
    study.prepare_data()
    run = os.path.join(CACHE, "runs", args.name)
    train = study.train_args(Arm(args.name), 0)
    train = dataclasses.replace(
        train,
        mlm_probability=args.mlm,
        eval_mlm_probability=0.15,
        out=run,
        progress=False,
        resume=False,
        overwrite=True,
        eval_every=max(1, train.steps // 6),
    )
    start = time.perf_counter()
    code = pretrain(train)
    seconds = time.perf_counter() - start
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        evals = [json.loads(line) for line in f if '"val_loss"' in line]
    row = {
        "name": args.name,
        "overrides": overrides,
        "train_mlm_probability": args.mlm,
        "exit_code": code,
        "wall_s": round(seconds, 1),
        "train_tokens": evals[-1]["tokens"],
        "train_split_tokens": study.meta["splits"]["train"]["tokens"],
        "held_out_masked_acc": [[e["step"], round(e["val_acc"], 4)] for e in evals],
        "final_val_loss": evals[-1]["val_loss"],
    }
    print(json.dumps(row))
    write_result("study_probe", [row], {"preset": "cpu", "threads": args.threads})


if __name__ == "__main__":
    main()
