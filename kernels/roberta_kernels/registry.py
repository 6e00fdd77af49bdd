"""Implementations of each op, by name: the built-ins and yours, for the model and the kernel lab.

    import roberta_kernels
    roberta_kernels.register("attention", "mine", my_attention, dtypes=(torch.bfloat16,), head_dims=(64,),
                             dropout=False)
    RobertaConfig(attention="mine")                    # the model calls it
    roberta-scratch kernels check --attention mine     # the standard correctness suite
    roberta-scratch kernels check --attention my_pkg.attn:flash   # or MODULE:FUNCTION, imported on use

The contracts (the same as roberta_kernels.attention and roberta_kernels.layer_norm):

attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None) -> (B, H, T, D)
    q, k, v: (B, H, T, D), one dtype, possibly non-contiguous views. key_padding_mask: (B, T)
    bool, True for real tokens, or None (nothing padded); it masks the keys. softmax_scale
    None means 1/sqrt(D). With dropout_p > 0, the attention probabilities are dropped out
    (and scaled by 1/(1-p)) as in training. The result has q's dtype. Padded query rows
    (where key_padding_mask is False) may hold any *finite* value: the model never reads
    them into a real position, so the lab compares real rows only, but a NaN there would
    still reach real rows through the next layer's 0 * NaN.

layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0) -> LN(dropout(x) + residual)
    x, residual: (..., N); weight, bias: (N,). The result has the promoted dtype of x and
    residual (a bf16 branch on an fp32 residual stream stays fp32, as under autocast).

Capabilities (dtypes, head_dims, dropout, devices; for attention also padding, seq_multiple,
min_seq and max_seq) say which cases an implementation claims; the lab skips the others, and
says so once per limit, instead of failing them. A kernel that only takes unpadded sequences
whose length is a multiple of 128:

    roberta_kernels.register("attention", "tiles128", fn, padding=False, seq_multiple=128)
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .utils import FLOAT_DTYPES

OPS = ("attention", "layer_norm")


@dataclass(frozen=True)
class Implementation:
    """One implementation of an op, with what it claims to support."""

    op: str
    name: str
    fn: Callable
    dtypes: tuple = FLOAT_DTYPES
    head_dims: tuple | None = None  # attention: the head dims it takes; None: any
    dropout: bool = True  # takes dropout_p > 0
    devices: tuple = ("cpu", "cuda")
    triton: bool = False  # Triton code: on the CPU it runs through the interpreter
    description: str = ""
    # attention's sequence limits: a key-padding mask at all, T a multiple of seq_multiple, and
    # min_seq <= T <= max_seq (None: no bound). The model refuses a batch outside them, naming
    # the limit; the lab skips such cases, one line per limit.
    padding: bool = True
    seq_multiple: int = 1
    min_seq: int = 1
    max_seq: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.seq_multiple, int) or self.seq_multiple < 1:
            raise ValueError(f"{self.name}: seq_multiple must be a whole number >= 1, got {self.seq_multiple!r}")
        if not isinstance(self.min_seq, int) or self.min_seq < 1:
            raise ValueError(f"{self.name}: min_seq must be a whole number >= 1, got {self.min_seq!r}")
        if self.max_seq is not None and (not isinstance(self.max_seq, int) or self.max_seq < self.min_seq):
            raise ValueError(f"{self.name}: max_seq must be a whole number >= min_seq, got {self.max_seq!r}")

    def unsupported_shape(self, seq_len: int | None = None, padded: bool = False) -> str | None:
        """Why this implementation does not claim a sequence length or a padding mask, or None."""
        if padded and not self.padding:
            return f"{self.name} does not claim padding (padding=False)"
        if seq_len is not None and seq_len % self.seq_multiple:
            return f"{self.name} claims T a multiple of {self.seq_multiple} only (seq_multiple={self.seq_multiple})"
        if seq_len is not None and seq_len < self.min_seq:
            return f"{self.name} claims T >= {self.min_seq} only (min_seq={self.min_seq})"
        if seq_len is not None and self.max_seq is not None and seq_len > self.max_seq:
            return f"{self.name} claims T <= {self.max_seq} only (max_seq={self.max_seq})"
        return None

    def unsupported(
        self, *, dtype=None, head_dim=None, dropout_p=0.0, device=None, seq_len=None, padded=False
    ) -> str | None:
        """Why this implementation does not claim a case, or None when it does."""
        if dtype is not None and dtype not in self.dtypes:
            return f"{self.name} does not claim {str(dtype).replace('torch.', '')}"
        if head_dim is not None and self.head_dims is not None and head_dim not in self.head_dims:
            return f"{self.name} does not claim head dim {head_dim}"
        if dropout_p > 0 and not self.dropout:
            return f"{self.name} does not claim dropout"
        device_type = getattr(device, "type", device)
        if device_type is not None and device_type not in self.devices:
            return f"{self.name} does not run on {device_type}"
        return self.unsupported_shape(seq_len, padded)


_REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}


def register(op: str, name: str, fn: Callable | None = None, **capabilities):
    """Register `fn` as `name` for `op` ("attention" or "layer_norm"); as a decorator without fn.

    capabilities: dtypes, head_dims, dropout, devices, triton, description, and for attention
    padding, seq_multiple, min_seq, max_seq (see Implementation).
    Registering a taken name replaces it.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"an implementation's name is a non-empty string without ':', got {name!r}")

    def add(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"{op} implementation {name!r} is not callable: {f!r}")
        _REGISTRY[op][name] = Implementation(op, name, f, **capabilities)
        return f

    return add(fn) if fn is not None else add


def names(op: str) -> list[str]:
    """The registered implementations of `op`, built-ins first."""
    return list(_REGISTRY[op])


def get(op: str, spec) -> Implementation:
    """The implementation `spec` names: a registered name, or MODULE:FUNCTION (imported now; if
    the module registered the function under its own name, with capabilities, that entry wins).
    An Implementation or a plain callable is taken as it is."""
    if isinstance(spec, Implementation):
        return spec
    if callable(spec):
        return Implementation(op, getattr(spec, "__name__", "custom"), spec)
    if not isinstance(spec, str):
        raise TypeError(f"{op} implementation must be a name or MODULE:FUNCTION, got {type(spec).__name__}")
    if spec in _REGISTRY[op]:
        return _REGISTRY[op][spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown {op} implementation {spec!r}: registered are {', '.join(names(op))}; "
            "or name a function as MODULE:FUNCTION"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = import_user_module(module_name)
    except ImportError as e:
        raise ValueError(f"{op} implementation {spec!r}: {_import_failure(module_name, e)}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{op} implementation {spec!r}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"{op} implementation {spec!r} is not callable")
    for impl in _REGISTRY[op].values():  # registered by its module, with its capabilities
        if impl.fn is fn:
            return impl
    return Implementation(op, spec, fn, description=f"{spec} (not registered: no capabilities declared)")


def import_user_module(name: str):
    """Import the module of a MODULE:FUNCTION, also from the current folder, as `python -m` and
    uvicorn find `app:main` there: the console script's sys.path starts at the venv's bin/, so
    `roberta-scratch kernels check --attention my_pkg.attn:flash` missed a my_pkg/ beside the user.
    subtle: the folder goes last on sys.path, so it can never shadow an installed package."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name != name.split(".")[0] or any(p in ("", here) for p in sys.path):
            raise
        sys.path.append(here)
        return importlib.import_module(name)


def _import_failure(module_name: str, e: ImportError) -> str:
    """Why a MODULE:FUNCTION's module did not import, with where it was looked for when it was not found."""
    text = f"cannot import {module_name!r} ({e})"
    if isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0]:
        where = [p or os.getcwd() for p in sys.path if isinstance(p, str)]
        if os.getcwd() not in where:
            where.append(os.getcwd())
        text += f"; looked in the current folder {os.getcwd()} and on sys.path: {', '.join(where[:6])}"
        text += f" (+{len(where) - 6} more)" if len(where) > 6 else ""
    return text


def import_modules(specs) -> None:
    """Import the module of every MODULE:FUNCTION among `specs`, before any name is resolved, so
    that a name such a module registers on import resolves wherever it stands on the command
    line (`kernels check --attention mine my_pkg.attn:flash`)."""
    for spec in specs:
        if isinstance(spec, str) and ":" in spec:
            module_name = spec.partition(":")[0]
            try:
                import_user_module(module_name)
            except ImportError as e:
                raise ValueError(f"implementation {spec!r}: {_import_failure(module_name, e)}") from None


def is_known(op: str, spec: str) -> bool:
    """Whether `spec` is a registered name or a MODULE:FUNCTION that imports (without raising)."""
    try:
        get(op, spec)
        return True
    except (ValueError, TypeError):
        return False


# ----------------------------------------------------------------------------- the built-ins


def eager_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """The math written out in the input dtype (softmax in fp32), as RoBERTa's reference does."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, T)
    if key_padding_mask is not None:
        att = att.masked_fill(~key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
    att = torch.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
    att = F.dropout(att, dropout_p, training=dropout_p > 0)
    return att @ v  # (B, H, T, D)


def sdpa_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """torch's F.scaled_dot_product_attention (flash, memory-efficient or cuDNN, as torch picks)."""
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=softmax_scale)


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flex_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """torch's FlexAttention with a block mask built from the key-padding mask: tiles of pure
    padding are skipped, as ours does. Compiled with torch.compile on CUDA (Triton-generated);
    eager (slow, but exact) on the CPU. No dropout."""
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as flex

    if dropout_p > 0:
        raise ValueError("flex attention has no dropout")
    B, H, T, D = q.shape
    block_mask = None
    if key_padding_mask is not None:
        real = key_padding_mask.to(torch.bool)

        def keep(b, h, q_idx, kv_idx):
            return real[b, kv_idx]

        block_mask = create_block_mask(keep, B, None, T, T, device=q.device)
    fn = _compiled_flex() if q.is_cuda else flex
    return fn(q, k, v, block_mask=block_mask, scale=softmax_scale)


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

        _FLEX = torch.compile(flex, dynamic=False)
    return _FLEX


def triton_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Ours: roberta_kernels.attention (Triton on CUDA or under TRITON_INTERPRET=1, else the torch reference)."""
    from . import attention

    return attention(q, k, v, key_padding_mask=key_padding_mask, dropout_p=dropout_p, softmax_scale=softmax_scale)


def torch_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    """F.dropout, the add and F.layer_norm: torch's separate kernels, as the model runs them."""
    h = F.dropout(x, dropout_p, training=dropout_p > 0)
    if residual is not None:
        h = residual + h
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps)


def triton_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    """Ours: roberta_kernels.layer_norm, residual add and dropout fused into one kernel each way."""
    from . import layer_norm

    return layer_norm(x, weight, bias, eps, residual=residual, dropout_p=dropout_p)


register("attention", "eager", eager_attention, description="the math written out (the model's reference)")
register("attention", "sdpa", sdpa_attention, description="torch F.scaled_dot_product_attention")
register(
    "attention",
    "triton",
    triton_attention,
    head_dims=(32, 64, 128),
    triton=True,
    description="ours: fused flash attention (kernels/roberta_kernels/flash_attention.py)",
)
if flex_available():
    register(
        "attention",
        "flex",
        flex_attention,
        dropout=False,
        description="torch FlexAttention with a block mask from the key-padding mask",
    )
register("layer_norm", "torch", torch_layer_norm, description="torch's dropout, add and layer_norm kernels")
register(
    "layer_norm",
    "triton",
    triton_layer_norm,
    triton=True,
    description="ours: residual + dropout + LayerNorm fused (kernels/roberta_kernels/layernorm.py)",
)
