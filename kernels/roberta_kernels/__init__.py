"""Fused GPU kernels for RoBERTa's hot path, each with a plain-torch fallback.

Nothing here imports roberta_scratch: the kernels can be studied, tested and
benchmarked on their own. The public functions below keep one signature
whatever runs underneath, so the model calls them unconditionally:

    Triton kernels  when triton imports and the tensors are on CUDA, or when
                    TRITON_INTERPRET=1 is set (then on CPU tensors too: that is
                    how the tests run the real kernel code without a GPU);
    the reference   (kernels/roberta_kernels/reference.py) everywhere else.

The kernel modules, flash_attention.py and layernorm.py, are imported on
first use, so `import roberta_kernels` never imports triton. (A submodule named
`attention` would replace the function roberta_kernels.attention once imported.)
What they share (tile configs, input checks, dropout seeds) is in utils.py,
which is plain torch.
Triton fixes compiled-or-interpreted for its own helpers when it is first
imported, so set TRITON_INTERPRET=1 before anything imports it (see
kernel_module).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys

from .reference import attention_reference, layer_norm_reference
from .registry import Implementation, register
from .registry import get as get_implementation
from .registry import names as implementations

if __name__ != "roberta_kernels":
    # subtle: from the repository root, kernels/ is a namespace folder, so `kernels.roberta_kernels`
    # would import a second copy with a registry of its own. The one name is roberta_kernels.
    raise ImportError(
        f"import roberta_kernels, not {__name__}: the package's one name is roberta_kernels "
        "(`kernels` is Hugging Face's package)"
    )

_TRUTHY = ("1", "true", "on", "yes", "y")  # what Triton accepts for TRITON_INTERPRET


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


def triton_available() -> bool:
    """Whether triton is installed (without importing it: see kernel_module)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(*tensors) -> bool:
    """Whether the public functions take the Triton path for these tensors."""
    if not (interpreter_requested() or all(t.is_cuda for t in tensors if t is not None)):
        return False
    return triton_available()


_MODE_MISMATCH = {
    True: "triton was imported before TRITON_INTERPRET=1 was set, so its interpreter cannot run in this "
    "process: set TRITON_INTERPRET=1 before anything imports triton (transformers does)",
    False: "triton was imported with TRITON_INTERPRET=1, so compiled kernels cannot run in this process: "
    "run them in a process without it",
}


def kernel_module(name: str, interpret: bool | None = None):
    """kernels.<name> with its kernels decorated for `interpret` (default: TRITON_INTERPRET).

    subtle: Triton picks compiler or interpreter when a function is decorated,
    not when it runs: for its own tl.* helpers when `triton` is first imported
    (transformers, for one, imports it), for ours when this module is. So the
    first import of triton happens under the requested setting, a kernel module
    loaded under the other setting is reloaded, and a process whose triton was
    imported the other way gets a clear error instead of a confusing one.
    """
    if interpret is None:
        interpret = interpreter_requested()
    module = sys.modules.get(f"{__name__}.{name}")
    if module is not None and module.INTERPRETED == interpret:
        return module  # the hot path: every attention / layer_norm call lands here
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        import triton
        import triton.language as tl

        if isinstance(tl.zeros, triton.runtime.JITFunction) == interpret:
            raise RuntimeError(_MODE_MISMATCH[interpret])
        if interpret:
            _fix_interpreter_scalars()
        module = importlib.import_module(f"{__name__}.{name}")
        if module.INTERPRETED != interpret:
            module = importlib.reload(module)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return module


@contextlib.contextmanager
def triton_interpreter(on: bool):
    """TRITON_INTERPRET=1 inside the block when `on` (Triton code runs in the CPU interpreter),
    unset otherwise (compiled); the variable is restored afterwards.

    subtle: Triton decides interpreted or compiled when a function is decorated, which for its
    own helpers is when `triton` is first imported: enter this before anything imports triton.
    roberta_kernels.attention and roberta_kernels.layer_norm read the variable on every call.
    """
    saved = os.environ.get("TRITON_INTERPRET")
    if on:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _fix_interpreter_scalars() -> None:
    """Make Triton's interpreter turn a scalar into an int the way numpy >= 2.4 allows.

    subtle: triton 3.6's interpreter gives tensors `__index__ = int(data)`, and a scalar's data
    is a 1-element array, which numpy >= 2.4 refuses to convert ("only 0-dimensional arrays
    can be converted to Python scalars"). Every `range(lo, hi, BLOCK)` with bounds loaded
    from memory reaches it. Newer triton squeezes the array first; this wraps the
    interpreter's tensor patch to do the same, so the kernels run under triton 3.6 with any
    numpy. It changes nothing where the interpreter already squeezes.
    """
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "squeezes_scalars", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.squeezes_scalars = True
    interpreter._patch_lang_tensor = patched


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None, seed=None):
    """Non-causal attention over (B, H, T, D) with an optional (B, T) key-padding mask.

    key_padding_mask is True for real tokens; padded query rows output zeros.
    With dropout_p > 0, `seed` keys the kernel's dropout stream (None draws
    one from torch's generator); the reference fallback uses torch's dropout.
    """
    if use_triton(q, k, v, key_padding_mask):
        return kernel_module("flash_attention").attention(q, k, v, key_padding_mask, dropout_p, softmax_scale, seed)
    return attention_reference(q, k, v, key_padding_mask, dropout_p, softmax_scale)


def layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0, seed=None, return_prenorm=False):
    """LN(dropout(x) + residual) over the last dimension; with return_prenorm, also the sum."""
    if use_triton(x, weight, bias, residual):
        return kernel_module("layernorm").layer_norm(x, weight, bias, eps, residual, dropout_p, seed, return_prenorm)
    return layer_norm_reference(x, weight, bias, eps, residual, dropout_p, return_prenorm)


def attention_dropout_mask(seed, batch, heads, seq_len, dropout_p, device="cpu"):
    """The (B, H, T, T) bool keep-mask that the Triton attention draws for `seed`.

    It runs the kernels' own RNG, so it needs Triton: on CUDA, or on the CPU with TRITON_INTERPRET=1.
    """
    return kernel_module("flash_attention").attention_dropout_mask(seed, batch, heads, seq_len, dropout_p, device)


def layer_norm_dropout_mask(seed, shape, dropout_p, device="cpu"):
    """The bool keep-mask, shaped like x, that the Triton layer_norm draws for `seed`.

    It runs the kernels' own RNG, so it needs Triton: on CUDA, or on the CPU with TRITON_INTERPRET=1.
    """
    return kernel_module("layernorm").layer_norm_dropout_mask(seed, shape, dropout_p, device)


__all__ = [
    "attention",
    "layer_norm",
    "attention_reference",
    "layer_norm_reference",
    "register",
    "get_implementation",
    "implementations",
    "Implementation",
    "attention_dropout_mask",
    "layer_norm_dropout_mask",
    "use_triton",
    "triton_available",
    "interpreter_requested",
    "kernel_module",
    "triton_interpreter",
]
