"""Throughput of our RobertaForMaskedLM against transformers' with the same weights, same batch.

    python -m benchmarks.bench_model [--configs tiny base] [--seq-len 128] [--repeats 5]

Two measurements per config, in tokens/s, with the reference run in the same
process and round-robin with ours (these machines are noisy, so ratios are what
counts):
  inference: eval mode, no grad, full-vocabulary logits at every position;
  train:     one MLM step (forward + backward + AdamW) with 15% of positions labelled,
             dropout on, as in pretraining. AdamW is torch's fused one on both sides, as
             our trainer and transformers' Trainer (optim="adamw_torch_fused") default to.
Both sides use their default attention (SDPA).

Against the machine's own limit: the same process measures its fp32 GEMM rate
(benchmarks.common.cpu_gemm_flops) before and after, and each side's achieved FLOP/s is
reported as a fraction of the better of the two. Achieved means the FLOPs each side really
executes: in training ours projects only the labelled positions onto the vocabulary, the
reference every position (roberta_scratch.flops counts them). Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import cpu_gemm_flops, print_table, time_interleaved, write_result
from roberta_scratch import RobertaConfig, RobertaForMaskedLM
from roberta_scratch.flops import flops_per_token

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
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=True)

        def fn():
            model.train()
            out = (
                model(ids, attention_mask=mask, labels=labels)
                if ours_api
                else model(input_ids=ids, attention_mask=mask, labels=labels)
            )
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return fn

    with torch.inference_mode():  # the two agree before anything is timed
        diff = ours.eval()(ids, attention_mask=mask).logits - theirs.eval()(input_ids=ids, attention_mask=mask).logits
    max_diff = diff.abs().max().item()

    f = flops_per_token(cfg, seq_len)
    body, head, labelled = f["attention"] + f["feed_forward"], f["mlm_head"], int((labels != -100).sum())
    executed = {  # FLOPs per call; training is forward + backward = 3x the forward
        "inference": {"ours": tokens * (body + head), "ref": tokens * (body + head)},
        "train": {"ours": 3 * (tokens * body + labelled * head), "ref": 3 * tokens * (body + head)},
    }
    rows = []
    for mode, make in (("inference", infer), ("train", train)):
        t = time_interleaved({"ours": make(ours, True), "ref": make(theirs, False)}, repeats, sync=sync)
        rows.append(
            {
                "config": preset,
                "mode": mode,
                "batch": list(ids.shape),
                "tokens_per_s_ours": tokens / t["ours"],
                "tokens_per_s_ref": tokens / t["ref"],
                "speedup": t["ref"] / t["ours"],
                "gflops_ours": executed[mode]["ours"] / t["ours"] / 1e9,
                "gflops_ref": executed[mode]["ref"] / t["ref"] / 1e9,
                "logits_max_abs_diff": max_diff,
            }
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "base"], help="model presets (default tiny base)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts (default 5)")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available, else cpu",
    )
    args = p.parse_args(argv)
    on_cpu = args.device == "cpu"
    gemm = [cpu_gemm_flops()] if on_cpu else []
    rows = []
    for preset in args.configs:
        rows += run(preset, args.seq_len, args.repeats, args.device)
        print(f"{preset}: " + ", ".join(f"{r['mode']} {r['speedup']:.2f}x" for r in rows[-2:]), flush=True)
    columns = ["config", "mode", "batch", "tokens_per_s_ours", "tokens_per_s_ref", "speedup"]
    if on_cpu:
        gemm.append(cpu_gemm_flops())
        limit = max(gemm) / 1e9
        for r in rows:
            r["gemm_fraction_ours"], r["gemm_fraction_ref"] = r["gflops_ours"] / limit, r["gflops_ref"] / limit
        columns += ["gflops_ours", "gflops_ref", "gemm_fraction_ours", "gemm_fraction_ref"]
        print(
            f"\nthis machine's fp32 GEMM: {limit:.1f} GFLOP/s with {torch.get_num_threads()} threads "
            f"(before / after: {gemm[0] / 1e9:.1f} / {gemm[1] / 1e9:.1f})"
        )
    print()
    print_table(rows, columns + ["logits_max_abs_diff"])
    extra = {"seq_len": args.seq_len, "repeats": args.repeats, "reference": "transformers RobertaForMaskedLM (sdpa)"}
    if on_cpu:
        extra["gemm_gflops_before_after"] = [g / 1e9 for g in gemm]
    path = write_result("model_" + args.device, rows, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
