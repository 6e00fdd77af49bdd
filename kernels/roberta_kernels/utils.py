"""What the kernel modules share, as Liger-Kernel's ops/utils.py: launch configs, input checks, seeds.

Plain torch at import time, no triton (launch imports it only to autotune on
CUDA): flash_attention.py and layernorm.py import it, and kernels/roberta_kernels/__init__.py
does not, so `import roberta_kernels` still never imports triton.

subtle: @triton.jit helpers do not belong here. Triton fixes compiled or
interpreted when a function is decorated, and roberta_kernels.kernel_module reloads a
kernel module when TRITON_INTERPRET changes, not the modules it imports: a
helper decorated here would keep whichever setting it was first decorated
under. Each kernel module keeps its own (small, documented) @triton.jit helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what every kernel here reads and writes


# ---------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TileConfig:
    """One kernel's tile and launch options: a program works on (BLOCK_M, BLOCK_N) tiles.

    The kernel modules name what the two sides are (query and key rows in
    attention, rows and features in layer norm); `options()` is what both
    the launchers and roberta_kernels.compile_check pass to Triton, so the compile
    check measures exactly what runs.
    """

    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int

    def options(self) -> dict:
        """Launch options; roberta_kernels.compile_check compiles with exactly these.

        FMA contraction is pinned on: Triton 3.10 turns its default off.
        """
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, enable_fp_fusion=True)


def tile_meta(cfg: TileConfig) -> dict:
    """The constexprs a config sets on a kernel: its tile."""
    return {"BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N}


def launch(
    kernel,
    grid,
    args: tuple,
    constexprs: dict,
    candidates: list,
    device: torch.device,
    cache: dict,
    key: list,
    meta=tile_meta,
) -> None:
    """Launch `kernel` over `grid`, a function of the config's constexprs (`meta(config)`).

    On CUDA with more than one candidate, triton.autotune picks among them the first time it
    meets a value of `key` (plus, as autotune adds them, the dtypes of the tensor arguments); the
    wrapper is made once per kernel and table and kept in the kernel module's `cache`. Timing
    runs the kernel several times on the real arguments, so the caller guarantees that each run
    writes the same values (no atomics, nothing accumulated across launches, inputs and the
    dropout seed read unchanged). Elsewhere (the interpreter, the CPU) the first candidate, untimed.
    """
    if device.type != "cuda" or len(candidates) == 1:
        first = meta(candidates[0])
        kernel[grid(first)](*args, **constexprs, **first, **candidates[0].options())
        return
    import triton  # the kernel modules have imported it already

    entry = (kernel.__name__, tuple(candidates))
    if entry not in cache:
        configs = [triton.Config(meta(c), num_warps=c.num_warps, num_stages=c.num_stages) for c in candidates]
        cache[entry] = triton.autotune(configs, key=key)(kernel)
    cache[entry][grid](*args, **constexprs, enable_fp_fusion=True)


def tuned_configs(cache: dict) -> dict[str, str]:
    """What autotune picked so far from a launch cache: "kernel [candidates]" -> the best config."""
    return {
        f"{name} {[str(c) for c in candidates]}": str(tuner.best_config)
        for (name, candidates), tuner in cache.items()
        if getattr(tuner, "best_config", None) is not None
    }


# ---------------------------------------------------------------------------
# Input checks (the launchers' _validate)
# ---------------------------------------------------------------------------


def check_float_dtypes(*tensors, message: str, same: bool = False) -> None:
    """Raise TypeError unless every tensor given is float16, bfloat16 or float32 (with same=True, all one).

    None entries are skipped (optional inputs). message is a str.format
    template, filled in only on failure: {dtype} is the first offending dtype,
    {dtypes} lists every dtype given, in order.
    """
    dtypes = [t.dtype for t in tensors if t is not None]
    bad = [d for d in dtypes if d not in FLOAT_DTYPES or (same and d != dtypes[0])]
    if bad:
        raise TypeError(message.format(dtype=bad[0], dtypes=", ".join(map(str, dtypes))))


def check_same_device(*tensors, message: str) -> None:
    """Raise ValueError(message) unless every tensor given is on the first one's device (None skipped)."""
    present = [t for t in tensors if t is not None]
    if any(t.device != present[0].device for t in present[1:]):
        raise ValueError(message)


def check_dropout_p(dropout_p: float) -> None:
    """Raise ValueError unless 0 <= dropout_p < 1 (p = 1 would divide by zero in 1 / (1 - p))."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")


# ---------------------------------------------------------------------------
# Dropout seeds
# ---------------------------------------------------------------------------


def fresh_seed() -> int:
    """A dropout seed drawn from torch's default generator, so torch.manual_seed reproduces it."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def kernel_seed(seed: int | None, dropout_p: float) -> int:
    """The seed a kernel is launched with: 0 without dropout, else `seed`, or a fresh one when None.

    Without dropout the kernels never read the seed, and pinning it to 0 means
    such a call never consumes torch's generator.
    """
    if dropout_p == 0.0:
        return 0
    return int(seed) if seed is not None else fresh_seed()
