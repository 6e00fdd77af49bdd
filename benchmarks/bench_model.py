"""Throughput of our RobertaForMaskedLM against transformers' with the same weights, same batch.

    python -m benchmarks.bench_model [--configs tiny base] [--seq-len 128] [--repeats 5]

Two measurements per config, in tokens/s, with the reference run in the same
process and round-robin with ours (these machines are noisy, so ratios are what
counts):
  inference: eval mode, no grad, full-vocabulary logits at every position;
  train:     one MLM step (forward + backward + AdamW) with 15% of positions labelled,
             dropout on, as in pretraining.
Both sides use their default attention (SDPA). Results go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import print_table, time_interleaved, write_result
from roberta_scratch import RobertaConfig, RobertaForMaskedLM

BATCH = {"tiny": 16, "small": 8, "base": 4, "large": 2}


def build_pair(preset: str, device: str):
    import transformers

    cfg = RobertaConfig.preset(preset)
    torch.manual_seed(0)
    theirs = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**cfg.to_hf_dict()))
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        ours = RobertaForMaskedLM.from_pretrained(tmp, attention="sdpa")
    return cfg, ours.to(device), theirs.to(device)


def batch(cfg: RobertaConfig, batch_size: int, seq_len: int, device: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, cfg.vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = cfg.bos_token_id, cfg.eos_token_id
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, -100)
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device)


def run(preset: str, seq_len: int, repeats: int, device: str) -> list:
    cfg, ours, theirs = build_pair(preset, device)
    ids, mask, labels = batch(cfg, BATCH[preset], seq_len, device)
    tokens = ids.numel()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def infer(model, ours_api):
        model.eval()

        def fn():
            with torch.inference_mode():
                return model(ids, attention_mask=mask) if ours_api else model(input_ids=ids, attention_mask=mask)
        return fn

    def train(model, ours_api):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

        def fn():
            model.train()
            out = model(ids, attention_mask=mask, labels=labels) if ours_api else \
                model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return fn

    with torch.inference_mode():  # the two agree before anything is timed
        diff = (ours.eval()(ids, attention_mask=mask).logits - theirs.eval()(input_ids=ids, attention_mask=mask).logits)
    max_diff = diff.abs().max().item()

    rows = []
    for mode, make in (("inference", infer), ("train", train)):
        t = time_interleaved({"ours": make(ours, True), "ref": make(theirs, False)}, repeats, sync=sync)
        rows.append({"config": preset, "mode": mode, "batch": list(ids.shape), "tokens_per_s_ours": tokens / t["ours"],
                     "tokens_per_s_ref": tokens / t["ref"], "speedup": t["ref"] / t["ours"],
                     "logits_max_abs_diff": max_diff})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "base"], help="model presets (default tiny base)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts (default 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    rows = []
    for preset in args.configs:
        rows += run(preset, args.seq_len, args.repeats, args.device)
        print(f"{preset}: " + ", ".join(f"{r['mode']} {r['speedup']:.2f}x" for r in rows[-2:]), flush=True)
    print()
    print_table(rows, ["config", "mode", "batch", "tokens_per_s_ours", "tokens_per_s_ref", "speedup",
                       "logits_max_abs_diff"])
    path = write_result("model_" + args.device, rows, {"seq_len": args.seq_len, "repeats": args.repeats,
                                                      "reference": "transformers RobertaForMaskedLM (sdpa)"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
