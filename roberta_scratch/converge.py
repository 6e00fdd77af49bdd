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
# attention, at the default 8 x 160 batches, took 24 s on a 2-core AMD EPYC (2026-12-07, `kernels
# converge --attention triton --steps 2` and `--steps 4`: 69.7 s and 117.7 s, so about 22 s more
# for the exact first step), so 50 steps would take 20 minutes there and far longer on a loaded
# machine. The interpreter's default is a smoke test. (At the old 64-token batches: 8.8 s a step.)
INTERPRETED_STEPS = 5
INTERPRETED_STEP_S = 24.0


@dataclass
class Curve:
    name: str
    losses: list


# Where each row's padding starts, as fractions of seq_len: inside the first 64-key tile, beyond it,
# past 128 keys, near the end of the row, and nowhere (a full row), as `kernels check` places it.
# At the default seq_len of 160: 32, 72, 96, 136, 155 and 160 tokens (up to 3 more at random).
LENGTH_FRACTIONS = (0.2, 0.45, 0.6, 0.85, 0.97, 1.0)


def synthetic_batches(
    steps: int, batch_size: int, seq_len: int, vocab_size: int, seed: int, padded: bool = True
) -> list[dict]:
    """Padded, masked MLM batches from a fixed random Markov chain: the same for every run. The
    rows' lengths cycle through LENGTH_FRACTIONS of seq_len, so padding starts in every key tile;
    with padded=False every row is seq_len tokens (for a kernel that declares padding=False)."""
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
        for i in range(batch_size):
            fraction = LENGTH_FRACTIONS[(step + i) % len(LENGTH_FRACTIONS)] if padded else 1.0
            jitter = int(torch.randint(0, 4, (1,), generator=g)) if fraction < 1 else 0
            n = max(1, min(seq_len, round(fraction * seq_len) + jitter) - 2)  # words, less <s> and </s>
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


# Step 0's gradients (see first_step_gradients): per parameter, the candidate's relative error
# against float64 may be FLOOR + SPREAD_FACTOR x that of the reference implementations in the same
# dtype. fp32, measured on the CPU (2026-12-07): sdpa, eager and a third correct one are within
# 5e-7 of float64 at worst; a softmax scale 1% off is 9e-5, padding honoured in the first 64 keys only 0.28.
GRADIENT_FLOOR = {torch.float32: 5e-6, torch.bfloat16: 1e-3}


def _gradients(attention: str, layer_norm, batch: dict, cfg_kwargs: dict, init_state: dict, device, dtype):
    """Every parameter's gradient of step 0's loss, as float64 on the CPU."""
    from .config import RobertaConfig
    from .model import RobertaForMaskedLM

    model = RobertaForMaskedLM(RobertaConfig(**cfg_kwargs, attention=attention, layer_norm=layer_norm))
    model.load_state_dict(init_state)
    model.to(device=device, dtype=dtype).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    model(**batch).loss.backward()
    return {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}


def _relative_errors(grads: dict, exact: dict) -> dict:
    return {n: float((g - exact[n]).norm() / exact[n].norm().clamp(min=1e-30)) for n, g in grads.items()}


def first_step_gradients(
    attention: str, layer_norm, twin: str, batch: dict, cfg_kwargs: dict, init_state: dict, device
) -> dict:
    """The exact first step: every parameter's gradient at step 0 with the candidate, against the
    same model in float64 with eager attention and torch's LayerNorm. A 1% error in a scale or a
    gradient, or padding honoured over part of the keys only, shows here at once, where the loss
    curves may take dozens of steps to drift apart. The candidate runs in float32 (bf16 on CUDA
    when it does not claim float32); `twin` in the same dtype measures what rounding alone gives."""
    import roberta_kernels

    candidate = roberta_kernels.get_implementation("attention", attention)
    dtype = torch.float32 if candidate.unsupported(dtype=torch.float32) is None else torch.bfloat16
    exact = _gradients("eager", None, batch, cfg_kwargs, init_state, torch.device("cpu"), torch.float64)
    cand = _relative_errors(_gradients(attention, layer_norm, batch, cfg_kwargs, init_state, device, dtype), exact)
    ref = _relative_errors(_gradients(twin, None, batch, cfg_kwargs, init_state, device, dtype), exact)
    missing = sorted(set(exact) - set(cand))
    limits = {n: GRADIENT_FLOOR[dtype] + SPREAD_FACTOR * ref[n] for n in cand}
    worst = max(cand, key=lambda n: cand[n] / limits[n])
    ok = not missing and all(cand[n] <= limits[n] for n in cand)  # NaN fails too
    return {
        "ok": ok,
        "dtype": str(dtype),
        "worst": worst,
        "error": cand[worst],
        "limit": limits[worst],
        "reference_error": ref[worst],
        "missing": missing,
    }


def converge(
    attention: str,
    layer_norm=None,
    steps: int = STEPS,
    batch_size: int = 8,
    seq_len: int = 160,
    device: str = "cpu",
    seed: int = 0,
    lr: float = 5e-3,
    reference: str = "sdpa",
    twin: str = "eager",
    show_progress: bool = False,
) -> dict:
    """The first step's gradients against float64, the loss curves and the verdict:
    {"first_step", "candidate", "reference", "twin", "first_divergence", "tolerance"}."""
    import roberta_kernels

    from .config import RobertaConfig
    from .model import RobertaForMaskedLM

    device = torch.device(device)
    candidate = roberta_kernels.get_implementation("attention", attention)
    # the kernel's declared limits: T a multiple of seq_multiple, and unpadded rows without padding
    seq_len = -(-max(seq_len, candidate.min_seq) // candidate.seq_multiple) * candidate.seq_multiple
    problem = candidate.unsupported(
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, head_dim=32, device=device, seq_len=seq_len
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
    batches = synthetic_batches(steps, batch_size, seq_len, vocab, seed, padded=candidate.padding)
    first_step = first_step_gradients(attention, layer_norm, twin, batches[0], cfg_kwargs, init_state, device)
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
        "batches": {"seq_len": seq_len, "padded": candidate.padding},
        "first_step": first_step,
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
        "interpreter, about 24 s a step)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=160,
        help="padded length of each batch (default 160: padding starts inside, past and far past a 64-key tile)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available, else cpu (Triton kernels then run in the interpreter)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the data and the masks (default 0)")


def run(args: argparse.Namespace) -> int:
    import roberta_kernels

    names = [("attention", args.attention)] + ([("layer_norm", args.layer_norm)] if args.layer_norm else [])
    on_cpu = torch.device(args.device).type == "cpu"
    # subtle: on the CPU, Triton code runs in the interpreter, and TRITON_INTERPRET must be set before
    # a MODULE:FUNCTION with Triton kernels is imported (they are decorated for one mode on import)
    with roberta_kernels.triton_interpreter(True) if on_cpu else contextlib.nullcontext():
        roberta_kernels.registry.import_modules([n for _, n in names])
        triton_on_cpu = on_cpu and any(roberta_kernels.get_implementation(op, n).triton for op, n in names)
        if args.steps is None:
            args.steps = INTERPRETED_STEPS if triton_on_cpu else STEPS
        if args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}")
        if triton_on_cpu:
            _interpreter_note(args.steps)
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
    return _report(args, result)


def _interpreter_note(steps: int) -> None:
    minutes = steps * INTERPRETED_STEP_S / 60
    print(
        f"note: Triton code runs in Triton's CPU interpreter here: about {INTERPRETED_STEP_S:g} s a step on a "
        f"quiet 2-core machine, so {steps} steps take about {minutes:.1f} min, plus about a third of a minute for "
        "the exact first step (more under load); "
        "--steps sets how many",
        file=sys.stderr,
        flush=True,
    )


def _report(args: argparse.Namespace, result: dict) -> int:
    """Print the first step's gradient check and the curves; 0 when both agree, else 1."""
    cand, ref, first, tol = result["candidate"], result["reference"], result["first_divergence"], result["tolerance"]
    grads = result["first_step"]
    print(
        f"step 0, every parameter's gradient against float64 ({grads['dtype']}): worst {grads['worst']}, "
        f"relative error {grads['error']:.2e} (limit {grads['limit']:.2e}; {result['twin'].name} "
        f"{grads['reference_error']:.2e})"
    )
    print(
        f"{cand.name} against {ref.name}: {args.steps} steps of {args.batch_size} x {result['batches']['seq_len']} "
        f"({'padded' if result['batches']['padded'] else 'unpadded: the kernel declares padding=False'}), "
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
    if not grads["ok"]:
        what = (
            f"no gradient for {grads['missing'][:3]}"
            if grads["missing"]
            else (f"{grads['worst']} off by {grads['error']:.2e} relative, over the limit {grads['limit']:.2e}")
        )
        print(f"WRONG GRADIENTS at step 0: {what}", file=sys.stderr)
        return 1
    if first:
        print(
            f"DIVERGED at step {first['step']}: {first['candidate']:.6f} vs {first['reference']:.6f} "
            f"(difference {first['difference']:.2e} > {first['limit']:.2e})",
            file=sys.stderr,
        )
        return 1
    print(f"OK: the curves agree at every step; the loss fell from {ref.losses[0]:.3f} to {ref.losses[-1]:.3f}")
    return 0
