"""How much arithmetic a RoBERTa does, and how much a GPU can: for MFU and for the benchmarks.

    flops_per_token(cfg, seq_len)   forward FLOPs per token by component (training is about 3x)
    card_peaks(name)                a GPU's dense peaks from its name: (16-bit TFLOP/s, tf32 TFLOP/s, HBM GB/s)
    peak_flops(device)              the 16-bit peak in FLOP/s that MFU divides by

One table serves the trainer's MFU and every benchmark, so they never disagree.
"""

from __future__ import annotations

import re

from .config import RobertaConfig


def flops_per_token(cfg: RobertaConfig, seq_len: int) -> dict:
    """Forward FLOPs per token by component (2 per multiply-add); training is about 3x.

    The MLM head's vocabulary projection is counted at every position (inference); the
    trainer's masked-only head runs it at mlm_probability of them.
    """
    H, I, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    # A is a layer's heads side by side: H, or less where prune removed heads (cfg.pruned_heads)
    widths = [cfg.heads_in_layer(i) * cfg.head_dim for i in range(L)]
    return {
        "embeddings": 0,  # lookups and one LayerNorm: no matmul
        "attention": sum(2 * 4 * H * A + 2 * 2 * seq_len * A for A in widths),  # qkv + out proj, QK^T and PV
        "feed_forward": L * 2 * 2 * H * I,
        "mlm_head": 2 * H * H + 2 * H * V,
    }


def mlm_training_flops_per_token(cfg: RobertaConfig, seq_len: int, mlm_probability: float) -> float:
    """Training FLOPs per token with the masked-only head: 3x forward, the head at the masked share."""
    f = flops_per_token(cfg, seq_len)
    return 3 * (f["attention"] + f["feed_forward"] + mlm_probability * f["mlm_head"])


# Dense peaks by device-name pattern: (fp16/bf16 TFLOP/s, tf32 TFLOP/s, HBM GB/s), from the
# vendors' data sheets. The first pattern that matches wins, so the specific ones come first.
GPU_PEAKS = [
    (r"H200", (989.0, 494.0, 4800.0)),
    (r"H100.*NVL", (835.0, 418.0, 3900.0)),
    (r"H100.*PCIe", (756.0, 378.0, 2000.0)),
    (r"H100", (989.0, 494.0, 3350.0)),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"A100.*80GB", (312.0, 156.0, 2039.0)),
    (r"A100", (312.0, 156.0, 1555.0)),
    (r"L40S", (362.0, 183.0, 864.0)),
    (r"A10\b", (125.0, 62.5, 600.0)),
    (r"L4\b", (121.0, 60.0, 300.0)),
    (r"4090", (165.0, 82.6, 1008.0)),
    (r"3090", (71.0, 35.6, 936.0)),
]
DEFAULT_CARD = "A100"  # what MFU assumes for a card the table does not know


def card_peaks(name: str) -> tuple[float, float, float] | None:
    """(16-bit TFLOP/s, tf32 TFLOP/s, GB/s) for a device name, or None when the card is not listed."""
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, name):
            return peaks
    return None


def peak_flops(device) -> float:
    """Dense bf16 peak of a CUDA device in FLOP/s, for MFU; an A100's when the card is unknown."""
    import torch

    peaks = card_peaks(torch.cuda.get_device_name(device)) or card_peaks(DEFAULT_CARD)
    return peaks[0] * 1e12
