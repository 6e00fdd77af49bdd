"""`roberta-scratch kernels converge`: does a kernel train the model as sdpa does?

    roberta-scratch kernels converge --attention mine [--layer-norm NAME] [--steps 50]

A kernel can be right on the unit shapes of `kernels check` and still wrong in the model:
non-contiguous q/k/v views, the padding of real batches, gradients that are only slightly
off but compound. This trains a tiny MLM from the same seed, weights and batches, with
dropout off: with the candidate, with the reference (sdpa attention, torch's LayerNorm),
and with a second correct implementation (eager), and compares the curves step by step.

subtle: training amplifies rounding. Two correct implementations agree to ~1e-7 at first,
but a perturbation grows step by step (over 200 steps, sdpa and eager can end percents
apart). So the allowed difference at step s also grows with the measured spread of the two
correct ones up to s:

    |cand_s - ref_s| <= atol + rtol_s * |ref_s| + K * max(|twin_t - ref_t| for t <= s)

The batches are padded (lengths from a quarter of seq_len to all of it) and masked as in
pretraining; the data is a fixed random Markov chain over the vocabulary, so the loss has
something to learn and falls. Step 0's loss is the forward alone and is held to a tighter
tolerance; later steps carry the gradients and the optimizer. Exit 0 when the curves agree;
otherwise the first step that diverges is reported.

Tolerances, with K = 10 (fp32 on the CPU; bf16 autocast on CUDA):
    fp32: step 0 rtol 2e-6, later steps rtol 2e-5, atol 1e-6. Over the default 50 steps sdpa
          and eager differ by about 1e-6 in a loss of 4.5, while a softmax scale 1% off, a
          gradient 1% off or ignored padding differ by 1e-4 or more within 50 steps.
    bf16: step 0 rtol 1e-3, later steps rtol 1e-3: the spread term carries bf16's rounding,
          measured in the same run (not yet run on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass

import torch

TOLERANCES = {  # (step 0 rtol, later rtol, atol)
    torch.float32: (2e-6, 2e-5, 1e-6),
    torch.bfloat16: (1e-3, 1e-3, 1e-4),
}
SPREAD_FACTOR = 10  # K: how many times the two correct implementations' spread is allowed
STEPS = 50  # the default run
# Triton code on the CPU runs in Triton's interpreter: one step of the tiny model with our fused
# attention and LayerNorm took 8.8 s on a 2-core AMD EPYC (2026-12-07, `kernels converge
# --attention triton --steps 3` and `--steps 6`: 28.8 s and 55.2 s), so 50 steps would take
# 7 minutes there and far longer on a loaded machine. The interpreter's default is a smoke test.
INTERPRETED_STEPS = 5
INTERPRETED_STEP_S = 8.8


@dataclass
class Curve:
    name: str
    losses: list


def synthetic_batches(steps: int, batch_size: int, seq_len: int, vocab_size: int, seed: int) -> list[dict]:
    """Padded, masked MLM batches from a fixed random Markov chain: the same for every run."""
    from .data.masking import DynamicMaskingCollator

    g = torch.Generator().manual_seed(seed)
    n_special = 4  # <s> <pad> </s> <unk>; <mask> is the last id
    words = vocab_size - n_special - 1
    # each token has 3 likely successors: a language a tiny model can learn in a few dozen steps
    successors = torch.randint(0, words, (words, 3), generator=g)
    collate = DynamicMaskingCollator(
        vocab_size, vocab_size - 1, 1, [0, 1, 2, 3, vocab_size - 1], generator=torch.Generator()
    )
    batches = []
    for step in range(steps):
        rows = []
        for _ in range(batch_size):
            n = int(torch.randint(seq_len // 4, seq_len - 1, (1,), generator=g))
            toks = [int(torch.randint(0, words, (1,), generator=g))]
            for _ in range(n - 1):
                toks.append(int(successors[toks[-1], int(torch.randint(0, 3, (1,), generator=g))]))
            rows.append(torch.tensor([0] + [t + n_special for t in toks] + [2]))  # <s> ... </s>
        collate.generator.manual_seed(seed * 100_003 + step)
        batches.append(collate(rows))
    return batches


def train_curve(
    attention: str, layer_norm, batches: list, cfg_kwargs: dict, init_state: dict, device, lr: float, bar=None
) -> list[float]:
    """The loss at each step of a short run with the given implementations (`bar`, a progress
    bar, is moved on a step at a time)."""
    from .config import RobertaConfig
    from .model import RobertaForMaskedLM
    from .training import param_groups

    cfg = RobertaConfig(**cfg_kwargs, attention=attention, layer_norm=layer_norm)
    model = RobertaForMaskedLM(cfg).to(device)
    model.load_state_dict(init_state)
    model.train()  # dropout is 0 in cfg_kwargs: train mode only matters for the code paths taken
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    losses = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
    return losses


def converge(
    attention: str,
    layer_norm=None,
    steps: int = STEPS,
    batch_size: int = 8,
    seq_len: int = 64,
    device: str = "cpu",
    seed: int = 0,
    lr: float = 5e-3,
    reference: str = "sdpa",
    twin: str = "eager",
    show_progress: bool = False,
) -> dict:
    """The loss curves and the verdict: {"candidate", "reference", "twin", "first_divergence", "tolerance"}."""
    import roberta_kernels

    from .config import RobertaConfig
    from .model import RobertaForMaskedLM

    device = torch.device(device)
    candidate = roberta_kernels.get_implementation("attention", attention)
    problem = candidate.unsupported(
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, head_dim=32, device=device
    )
    if problem:
        raise ValueError(f"cannot train with {attention}: {problem}")
    vocab = 120
    cfg_kwargs = dict(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=seq_len + 2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    init_state = RobertaForMaskedLM(RobertaConfig(**cfg_kwargs)).state_dict()
    batches = synthetic_batches(steps, batch_size, seq_len, vocab, seed)
    ref = train_curve(reference, None, batches, cfg_kwargs, init_state, device, lr)
    other = train_curve(twin, None, batches, cfg_kwargs, init_state, device, lr)
    from .progress import progress

    bar = progress(total=steps, desc=f"training with {attention}", unit="steps", disable=not show_progress)
    cand = train_curve(attention, layer_norm, batches, cfg_kwargs, init_state, device, lr, bar)
    bar.close()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rtol0, rtol, atol = TOLERANCES[dtype]
    first, spread = None, 0.0
    for step, (a, b, c) in enumerate(zip(cand, ref, other, strict=True)):
        spread = max(spread, abs(c - b))
        limit = atol + (rtol0 if step == 0 else rtol) * abs(b) + SPREAD_FACTOR * spread
        if not abs(a - b) <= limit:  # NaN fails too
            first = {"step": step, "candidate": a, "reference": b, "difference": abs(a - b), "limit": limit}
            break
    return {
        "candidate": Curve(attention + (f" + {layer_norm}" if layer_norm else ""), cand),
        "reference": Curve(reference, ref),
        "twin": Curve(twin, other),
        "first_divergence": first,
        "tolerance": {
            "step0_rtol": rtol0,
            "rtol": rtol,
            "atol": atol,
            "spread_factor": SPREAD_FACTOR,
            "dtype": str(dtype),
        },
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", required=True, help="the candidate: a registered name or MODULE:FUNCTION")
    p.add_argument("--layer-norm", default=None, help="a LayerNorm implementation to train with too (default torch)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default {STEPS}; {INTERPRETED_STEPS} when Triton code runs in the CPU "
        "interpreter, about 9 s a step)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="padded length of each batch (default 64)")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available, else cpu (Triton kernels then run in the interpreter)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the data and the masks (default 0)")


def run(args: argparse.Namespace) -> int:
    import roberta_kernels

    names = [("attention", args.attention)] + ([("layer_norm", args.layer_norm)] if args.layer_norm else [])
    roberta_kernels.registry.import_modules([n for _, n in names])
    triton_on_cpu = args.device == "cpu" and any(roberta_kernels.get_implementation(op, n).triton for op, n in names)
    if args.steps is None:
        args.steps = INTERPRETED_STEPS if triton_on_cpu else STEPS
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if triton_on_cpu:
        minutes = args.steps * INTERPRETED_STEP_S / 60
        print(
            f"note: Triton code runs in Triton's CPU interpreter here: about {INTERPRETED_STEP_S:g} s a step on a "
            f"quiet 2-core machine, so {args.steps} steps take about {minutes:.1f} min (more under load); "
            "--steps sets how many",
            file=sys.stderr,
            flush=True,
        )
    # on the CPU, Triton code runs in the interpreter (not the torch fallback); elsewhere as it is
    with roberta_kernels.triton_interpreter(True) if triton_on_cpu else contextlib.nullcontext():
        if triton_on_cpu:
            for module in ("flash_attention", "layernorm"):
                roberta_kernels.kernel_module(module, interpret=True)
        result = converge(
            args.attention,
            args.layer_norm,
            args.steps,
            args.batch_size,
            args.seq_len,
            args.device,
            args.seed,
            show_progress=True,
        )
    cand, ref, first, tol = result["candidate"], result["reference"], result["first_divergence"], result["tolerance"]
    print(
        f"{cand.name} against {ref.name}: {args.steps} steps of {args.batch_size} x {args.seq_len} (padded), "
        f"{tol['dtype']}, tolerance atol {tol['atol']:g} + rtol {tol['rtol']:g} (step 0: {tol['step0_rtol']:g}) "
        f"+ {tol['spread_factor']} x the spread of {ref.name} and {result['twin'].name}"
    )
    print(f"{'step':>5} {cand.name[:24]:>24} {ref.name[:12]:>12} {'difference':>11}")
    shown = sorted(
        {0, len(ref.losses) - 1} | set(range(0, len(ref.losses), 10)) | ({first["step"]} if first else set())
    )
    for s in shown:
        if s < len(cand.losses):
            print(f"{s:>5} {cand.losses[s]:>24.6f} {ref.losses[s]:>12.6f} {abs(cand.losses[s] - ref.losses[s]):>11.2e}")
    if first:
        print(
            f"DIVERGED at step {first['step']}: {first['candidate']:.6f} vs {first['reference']:.6f} "
            f"(difference {first['difference']:.2e} > {first['limit']:.2e})",
            file=sys.stderr,
        )
        return 1
    print(f"OK: the curves agree at every step; the loss fell from {ref.losses[0]:.3f} to {ref.losses[-1]:.3f}")
    return 0
