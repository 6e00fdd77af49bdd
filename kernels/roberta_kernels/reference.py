"""Plain-torch references for every kernel in this package.

They define the semantics the Triton kernels must reproduce, and they are
the fallback whenever Triton is missing or a tensor is not on CUDA. They are
written for clarity, not speed: fp32 math, nothing fused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_reference(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None, dropout_mask=None):
    """softmax(q k^T * scale, masked over padding keys) -> dropout -> @ v.

    q, k, v: (B, H, T, D). key_padding_mask: (B, T) bool, True for real tokens.
    dropout_mask: optional (B, H, T, T) bool keep-mask; when given it replaces
    the random draw, so a test can rebuild exactly what a kernel did.
    Padded query rows output zeros (and so get zero gradients): an encoder
    never reads them. A sequence with no real token at all outputs zeros too,
    not the NaNs of a softmax over nothing.
    Returns (B, H, T, D) in q's dtype; the math runs in fp32.
    """
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, T)
    if key_padding_mask is not None:
        real_keys = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
        scores = scores.masked_fill(~real_keys, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if key_padding_mask is not None:
        probs = probs.masked_fill(~real_keys, 0.0)  # an all-padding row is NaN after the softmax
    if dropout_mask is not None:
        probs = probs * dropout_mask.to(probs.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, v)  # (B, H, T, D)
    if key_padding_mask is not None:
        out = out * key_padding_mask[:, None, :, None].to(out.dtype)  # zero padded query rows
    return out.to(dtype)


def layer_norm_reference(
    x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0, return_prenorm=False, dropout_mask=None
):
    """LN(dropout(x) + residual): RoBERTa's post-LN step.

    x, residual: (..., N). weight, bias: (N,). dropout_mask: optional keep-mask
    shaped like x, replacing the random draw (for tests).
    Returns y, or (y, prenorm_sum) when return_prenorm is set, in the promoted
    dtype of x and residual (so a bf16 branch added to an fp32 residual stream
    stays fp32, as under autocast); the math runs in fp32.
    """
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    h = x.float()
    if dropout_mask is not None:
        h = h * dropout_mask.to(h.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        h = F.dropout(h, p=dropout_p, training=True)
    if residual is not None:
        h = h + residual.float()
    y = F.layer_norm(
        h, (h.shape[-1],), None if weight is None else weight.float(), None if bias is None else bias.float(), eps
    )
    y = y.to(out_dtype)
    return (y, h.to(out_dtype)) if return_prenorm else y
