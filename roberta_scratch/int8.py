"""Int8 weights for every Linear layer: what `roberta-scratch quantize` writes and loads.

A weight W (out, in) is stored as int8 q with one float scale per output channel (per row),
symmetric: W ~= q * scale[:, None], scale = max|W_row| / 127. The bias stays float. Two methods
(config.quantization["method"]):

  dynamic-int8      activations are quantized too, per call, with a scale measured on the batch
                    (hence "dynamic": no calibration set), and the matmul runs in int8 with int32
                    accumulation. On x86 CPUs this is PyTorch's own quantized engine: oneDNN where
                    the CPU has VNNI (full 8-bit activations), FBGEMM otherwise (7-bit activations,
                    reduce_range, so that AVX2's 16-bit intermediate sums cannot saturate).
  weight-only-int8  the int8 weight is turned back into float for each call: 4x smaller, no faster.

Off the CPU (or where torch lacks the quantized engine) dynamic-int8 runs as weight-only: the
stored numbers are the same, only the activations stay float.

Why not torchao or torch.ao.quantization.quantize_dynamic (benchmarks/bench_int8.py): torchao's
int8 dynamic-activation config has no eager CPU kernel (0.95x fp32 on a base feed-forward: it
needs torch.compile), and torch.ao.quantization's module swap is deprecated (and, with FBGEMM's
7-bit activations, twice our error). The engine below is the kernel
quantize_dynamic itself calls; what we store is plain int8 + float32 tensors in safetensors, so a
checkpoint does not depend on any library's serialised packed format (docs/deploy.md).

Word embeddings may be stored as int8 too (per row, config.quantization["embeddings"]); they are
turned back into float when the model loads: lookups and the tied MLM decoder stay float.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .machine import cpu_isa

EMBEDDING_KEY = "embeddings.word_embeddings.weight"  # the end of the key, with or without "roberta."
SCALE_SUFFIX = "_scale"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q, float32 scale) with w ~= q * scale[:, None]: symmetric, one scale per row."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # an all-zero row keeps a usable scale
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.to(torch.float32) * scale[:, None].to(torch.float32)).to(dtype)


@functools.cache
def _engine() -> tuple[str | None, bool]:
    """(quantized engine, reduce_range) for this CPU, or (None, _) where torch has none."""
    engines = torch.backends.quantized.supported_engines
    vnni = any("VNNI" in isa or "AMX" in isa for isa in cpu_isa())
    if vnni and "onednn" in engines:
        return "onednn", False
    for name in ("fbgemm", "x86"):
        if name in engines:
            return name, True
    return None, False


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 per output channel (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, dynamic: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.dynamic = in_features, out_features, dynamic
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)
        self._packed = None  # the engine's prepacked weight, made on first use

    @classmethod
    def from_float(cls, linear: nn.Linear, dynamic: bool = True) -> Int8Linear:
        m = cls(linear.in_features, linear.out_features, dynamic)
        q, scale = quantize_rows(linear.weight)
        m.weight.copy_(q)
        m.weight_scale.copy_(scale)
        with torch.no_grad():
            m.bias.copy_(linear.bias.detach().float() if linear.bias is not None else 0.0)
        return m.to(linear.weight.device)

    def extra_repr(self) -> str:
        kind = "dynamic int8" if self.dynamic else "int8 weights"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "weight")
        if w is not None and w.dtype != torch.int8:
            raise ValueError(f"{prefix}weight is {w.dtype}, but an int8 model stores int8 weights")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._packed = None  # new numbers: pack again

    def _apply(self, fn, recurse=True):  # .to(device) and friends: the packed copy is stale
        self._packed = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            packed = self._pack()
            if packed is not None:
                op, reduce_range = packed
                y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features), op, reduce_range)
                return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, dequantize_rows(self.weight, self.weight_scale, x.dtype), self.bias.to(x.dtype))

    def _pack(self):
        """The weight prepacked for torch's quantized engine, or None where there is none."""
        if self._packed is None:
            engine, reduce_range = _engine()
            if engine is None:
                self._packed = False
                return None
            previous = torch.backends.quantized.engine
            try:
                torch.backends.quantized.engine = engine
                with warnings.catch_warnings():  # torch deprecates making qint8 tensors; this is internal
                    warnings.simplefilter("ignore")
                    zero = torch.zeros(self.out_features, dtype=torch.long)
                    qw = torch._make_per_channel_quantized_tensor(self.weight, self.weight_scale.double(), zero, 0)
                    self._packed = (torch.ops.quantized.linear_prepack(qw, self.bias.detach().float()), reduce_range)
            except (RuntimeError, AttributeError):  # a torch without the quantized engine
                self._packed = False
            finally:
                torch.backends.quantized.engine = previous
        return self._packed or None


def quantizable(model: nn.Module) -> list[str]:
    """Names of the Linear layers quantize converts: every one in the encoder and the head."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def swap_linears(model: nn.Module, quantization: dict, from_float: bool = False) -> nn.Module:
    """Replace each nn.Linear by an Int8Linear, in place: empty (for loading a quantized state
    dict) or quantized from the float weights (from_float=True)."""
    dynamic = quantization["method"] == "dynamic-int8"
    for name in quantizable(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        if from_float:
            new = Int8Linear.from_float(linear, dynamic)
        else:
            new = Int8Linear(linear.in_features, linear.out_features, dynamic)
        setattr(parent, child, new)
    return model


def _embedding_key(sd: dict) -> str:
    return next(k for k in sd if k.endswith(EMBEDDING_KEY))


def pack_embeddings(sd: dict) -> dict:
    """The state dict with the word embedding as int8 rows + a float scale per row (storage only)."""
    key = _embedding_key(sd)
    q, scale = quantize_rows(sd[key])
    return {**sd, key: q, key + SCALE_SUFFIX: scale}


def unpack_embeddings(sd: dict) -> dict:
    """pack_embeddings undone: float32 word embeddings for a model to load."""
    key = _embedding_key(sd)
    if key + SCALE_SUFFIX not in sd:
        return sd
    sd = dict(sd)
    scale = sd.pop(key + SCALE_SUFFIX)
    if sd[key].dtype != torch.int8 or scale.shape != sd[key].shape[:1]:
        raise ValueError(f"{key}: an int8 embedding needs int8 rows and one scale per row")
    sd[key] = dequantize_rows(sd[key], scale)
    return sd
