"""What a run compares: the named implementations, then every reference (sdpa forced to each backend,
FlexAttention, eager; torch's LayerNorm), and what each actually runs as on this machine."""

from __future__ import annotations

import torch

from .. import interpreter_requested, registry, triton_available

# the references every attention run includes: sdpa forced to each backend, then the registry's own
SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-mem-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
}


ATTENTION_REFERENCES = (*SDPA_BACKENDS, "flex", "eager")


LAYER_NORM_REFERENCE = "torch"


def _sdpa_backend(name: str, backend: str) -> registry.Implementation:
    """torch's sdpa forced to one backend (the key-padding mask becomes a boolean attn_mask)."""

    def fn(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if not hasattr(SDPBackend, backend):
            raise NotImplementedError(f"this torch has no SDPBackend.{backend}")
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return registry.sdpa_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)

    return registry.Implementation(
        "attention", name, fn, description=f"F.scaled_dot_product_attention, SDPBackend.{backend} only"
    )


def attention_implementations(named: list, skip=()) -> list[tuple[registry.Implementation, str]]:
    """(implementation, role) for each named one, then each reference not named or skipped."""
    impls = [(registry.get("attention", spec), "named") for spec in named]
    taken = {impl.name for impl, _ in impls} | set(skip)
    for name in ATTENTION_REFERENCES:
        if name in taken:
            continue
        if name in SDPA_BACKENDS:
            impls.append((_sdpa_backend(name, SDPA_BACKENDS[name]), "reference"))
        elif name == "flex" and not registry.flex_available():
            impls.append(
                (registry.Implementation("attention", "flex", _missing("this torch has no FlexAttention")), "reference")
            )
        else:
            impls.append((registry.get("attention", name), "reference"))
    return impls


def layer_norm_implementations(named: list) -> list[tuple[registry.Implementation, str]]:
    impls = [(registry.get("layer_norm", spec), "named") for spec in named]
    if LAYER_NORM_REFERENCE not in {impl.name for impl, _ in impls}:
        impls.append((registry.get("layer_norm", LAYER_NORM_REFERENCE), "reference"))
    return impls


def _missing(why: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(why)

    return fn


def runs_as(impl: registry.Implementation, device: torch.device) -> str:
    """What actually executes for this implementation here: the dry run's Triton is the interpreter."""
    if impl.triton:
        if device.type == "cuda":
            return "triton interpreter (TRITON_INTERPRET is set!)" if interpreter_requested() else "triton, compiled"
        if not triton_available():
            return "torch reference (triton is not installed)"
        return "triton interpreter" if interpreter_requested() else "torch reference (no GPU)"
    if impl.name == "flex":
        return "torch.compile" if device.type == "cuda" else "eager (unfused)"
    return "torch"
