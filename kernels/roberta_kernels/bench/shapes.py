"""One shape of one op, measured for every implementation: errors against the float32 reference, then
the median time of the forward and of the forward+backward, as TFLOP/s (attention) or GB/s (LayerNorm)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace

import torch

from ..reference import attention_reference, layer_norm_reference
from .implementations import LAYER_NORM_REFERENCE, SDPA_BACKENDS, runs_as
from .timing import median_ms

FLOP_COUNT = "FlashAttention's, on real tokens: forward 4*H*D*sum(L_b^2), backward 2.5x forward (fwd+bwd 3.5x)"


LN_BYTES = "forward 3*M*N (read x, r; write y); backward 4*M*N (read dy, x, r; write dx), 5 with dropout (+ d_residual)"


BWD_FLOP_FACTOR = 2.5


EPS = 1e-5


@contextmanager
def _captured_warnings():
    """Warnings raised inside, kept (sdpa explains a refused backend only through warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _why(exc: BaseException, caught=()) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = f"{type(exc).__name__}: {lines[0][:200]}"
    hints = [str(w.message).strip().splitlines()[0][:160] for w in caught if str(w.message).strip()]
    return reason + (f" ({'; '.join(dict.fromkeys(hints))})" if hints else "")


def _refused(name: str, exc: BaseException) -> bool:
    """A backend declining the case (not a bug): NotImplementedError, or sdpa finding no kernel for it."""
    if isinstance(exc, NotImplementedError):
        return True
    text = str(exc)
    return (
        name in SDPA_BACKENDS
        and isinstance(exc, RuntimeError)
        and ("No available kernel" in text or "No viable backend" in text)
    )


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def attention_flops(lengths: torch.Tensor, heads: int, head_dim: int) -> float:
    """FlashAttention's forward FLOP count on real tokens: two L x L x D matmuls per head."""
    return 4.0 * heads * head_dim * float((lengths.double() ** 2).sum())


def layer_norm_bytes(M: int, N: int, element_size: int, dropout_p: float) -> tuple[int, int]:
    """The bytes y = LN(dropout(x) + r) must move, (forward, backward): see LN_BYTES."""
    return 3 * M * N * element_size, (5 if dropout_p > 0 else 4) * M * N * element_size


def _masked_max_err(a: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> float:
    """max |a - ref| where keep (broadcast) is True; masked_fill, not a product, so NaN elsewhere is ignored."""
    return float((a.float() - ref).abs().masked_fill(~keep, 0).max())


def _attention_inputs(T: int, pad: float, s: dict, device) -> SimpleNamespace:
    """q, k, v and dO for one shape (right padding), their detached copies, the mask, the FLOP count,
    and the float32 reference's output and gradients (dropout off)."""
    dtype, H, D = s["dtype"], s["heads"], s["head_dim"]
    B = max(1, s["tokens"] // T)
    real = max(1, round(T * (1.0 - pad)))
    lengths = torch.full((B,), real)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device) if real < T else None
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    keep = (torch.ones(B, T, dtype=torch.bool, device=device) if mask is None else mask)[:, None, :, None]
    # subtle: no gradient arrives at padded query rows (the model's loss never reads them). With a
    # random one there, implementations whose padded rows attend to real keys would add it to those
    # keys' dK and dV, and differ from the reference (whose padded rows are zero) by design, not by bug.
    do = do.masked_fill(~keep, 0)
    ref_in = [t.detach().float().requires_grad_() for t in leaves]
    ref = attention_reference(*ref_in, key_padding_mask=mask)
    ref.backward(do.float())
    return SimpleNamespace(
        B=B,
        lengths=lengths,
        mask=mask,
        keep=keep,
        leaves=leaves,
        detached=[t.detach() for t in leaves],
        do=do,
        ref=ref.detach(),
        ref_grads=[t.grad for t in ref_in],
        flops=attention_flops(lengths, H, D),
    )


def _measure_attention(row: dict, fn, x: SimpleNamespace, p: float, s: dict, device) -> None:
    """Fill `row` for one implementation: the forward's error on real rows and its time, then the
    gradients' error and the forward+backward's time; a failure is recorded, not raised."""
    qd, kd, vd = x.detached
    try:  # the forward: error on real rows, then the time
        with torch.no_grad(), _captured_warnings() as caught:
            out = fn(qd, kd, vd, key_padding_mask=x.mask, dropout_p=0.0)
        row["max_err_out"] = _masked_max_err(out, x.ref, x.keep)
        row["finite"] = bool(torch.isfinite(out).all())
        del out
        ms = median_ms(partial(_forward, fn, x.detached, x.mask, p), device, **s["timing"])
        row.update(fwd_ms=ms, fwd_tflops=x.flops / ms * 1e-9)
    except Exception as exc:  # noqa: BLE001 (any implementation's failure is a result, reported)
        row.update(status="not supported" if _refused(row["impl"], exc) else "error", reason=_why(exc, caught))
        return
    try:  # forward + backward
        for t in x.leaves:
            t.grad = None
        with _captured_warnings() as caught:
            fn(*x.leaves, key_padding_mask=x.mask, dropout_p=0.0).backward(x.do)
        row["max_err_grad"] = max(
            _masked_max_err(t.grad, r, x.keep) for t, r in zip(x.leaves, x.ref_grads, strict=True)
        )
        fwd_bwd = partial(_forward_backward, fn, x.leaves, x.mask, p, x.do)
        ms = median_ms(fwd_bwd, device, grad_to_none=x.leaves, **s["timing"])
        row.update(fwd_bwd_ms=ms, fwd_bwd_tflops=(1 + BWD_FLOP_FACTOR) * x.flops / ms * 1e-9, status="ok")
    except Exception as exc:  # noqa: BLE001
        how = "not supported: " if _refused(row["impl"], exc) else "failed: "
        row.update(status="forward only", reason="backward " + how + _why(exc, caught))
    finally:
        for t in x.leaves:
            t.grad = None


def _forward(fn, qkv, mask, p) -> None:
    with torch.no_grad():
        fn(*qkv, key_padding_mask=mask, dropout_p=p)


def _forward_backward(fn, qkv, mask, p, do) -> None:
    fn(*qkv, key_padding_mask=mask, dropout_p=p).backward(do)


def bench_attention_shape(impls, T: int, pad: float, s: dict, device, peaks: dict) -> list[dict]:
    """One row per implementation for one (T, pad) shape; see the package docstring."""
    H, D, p = s["heads"], s["head_dim"], s["dropout"]
    x = _attention_inputs(T, pad, s, device)
    rows = []
    for impl, role in impls:
        row = {
            "op": "attention",
            "impl": impl.name,
            "role": role,
            "T": T,
            "pad": pad,
            "B": x.B,
            "H": H,
            "D": D,
            "real_tokens": int(x.lengths.sum()),
            "dtype": s["dtype_name"],
            "dropout": p,
            "runs_as": runs_as(impl, device),
        }
        rows.append(row)
        why = impl.unsupported(dtype=s["dtype"], head_dim=D, dropout_p=p, device=device)
        if why:
            row.update(status="skipped", reason=why)
            continue
        _measure_attention(row, impl.fn, x, p, s, device)
        for phase in ("fwd", "fwd_bwd"):
            if f"{phase}_tflops" in row:
                if peaks.get("matmul_tflops_measured"):
                    row[f"{phase}_frac_measured_peak"] = row[f"{phase}_tflops"] / peaks["matmul_tflops_measured"]
                if peaks.get("datasheet_tflops"):
                    row[f"{phase}_frac_datasheet_peak"] = row[f"{phase}_tflops"] / peaks["datasheet_tflops"]
        _free(device)
    return rows


def add_padding_speedups(rows: list, pad_seq_len: int) -> None:
    """time(pad = 0) / time(pad) per implementation at the padding sweep's T: the win from skipping padding."""
    base = {r["impl"]: r for r in rows if r["T"] == pad_seq_len and r["pad"] == 0}
    for r in rows:
        b = base.get(r["impl"])
        if r["T"] != pad_seq_len or r["pad"] == 0 or b is None:
            continue
        for phase in ("fwd", "fwd_bwd"):
            if f"{phase}_ms" in r and f"{phase}_ms" in b:
                r[f"{phase}_speedup_vs_no_pad"] = b[f"{phase}_ms"] / r[f"{phase}_ms"]


def _ln_forward(fn, x, w, b, r, p) -> None:
    with torch.no_grad():
        fn(x, w, b, EPS, residual=r, dropout_p=p)


def _ln_forward_backward(fn, x, w, b, r, p, dy) -> None:
    fn(x, w, b, EPS, residual=r, dropout_p=p).backward(dy)


def bench_layer_norm_shape(impls, M: int, N: int, p: float, s: dict, device, peaks: dict) -> list[dict]:
    """One row per implementation for y = LN(dropout(x) + r) on (M, N); see the module docstring."""
    dtype = s["dtype"]
    g = torch.Generator(device=device).manual_seed(0)
    x, r, dy = (torch.randn(M, N, device=device, dtype=dtype, generator=g) for _ in range(3))
    w = (1.0 + 0.1 * torch.randn(N, device=device, generator=g)).to(dtype)
    b = (0.1 * torch.randn(N, device=device, generator=g)).to(dtype)
    leaves = [t.requires_grad_() for t in (x, r, w, b)]
    detached = [t.detach() for t in leaves]
    bytes_fwd, bytes_bwd = layer_norm_bytes(M, N, x.element_size(), p)

    ref_in = [t.detach().float().requires_grad_() for t in leaves]
    ref = layer_norm_reference(ref_in[0], ref_in[2], ref_in[3], EPS, residual=ref_in[1])
    ref.backward(dy.float())
    ref = ref.detach()

    rows = []
    for impl, role in impls:
        row = {
            "op": "layer_norm",
            "impl": impl.name,
            "role": role,
            "M": M,
            "N": N,
            "dropout": p,
            "dtype": s["dtype_name"],
            "runs_as": runs_as(impl, device),
        }
        rows.append(row)
        why = impl.unsupported(dtype=dtype, dropout_p=p, device=device)
        if why:
            row.update(status="skipped", reason=why)
            continue
        fn = impl.fn
        xd, rd, wd, bd = detached
        try:
            with torch.no_grad():
                y = fn(xd, wd, bd, EPS, residual=rd, dropout_p=0.0)  # errors without dropout: one function
            row["max_err_out"] = float((y.float() - ref).abs().max())
            del y

            ms = median_ms(partial(_ln_forward, fn, xd, wd, bd, rd, p), device, **s["timing"])
            row.update(fwd_ms=ms, fwd_gbs=bytes_fwd / ms * 1e-6)
            for t in leaves:
                t.grad = None
            fn(x, w, b, EPS, residual=r, dropout_p=0.0).backward(dy)
            row["max_err_grad"] = max(
                float((t.grad.float() - u.grad).abs().max()) for t, u in zip(leaves, ref_in, strict=True)
            )

            fwd_bwd = partial(_ln_forward_backward, fn, x, w, b, r, p, dy)
            ms = median_ms(fwd_bwd, device, grad_to_none=leaves, **s["timing"])
            row.update(fwd_bwd_ms=ms, fwd_bwd_gbs=(bytes_fwd + bytes_bwd) / ms * 1e-6, status="ok")
        except Exception as exc:  # noqa: BLE001
            row.update(status="not supported" if _refused(impl.name, exc) else "error", reason=_why(exc))
        for t in leaves:
            t.grad = None
        for phase in ("fwd", "fwd_bwd"):
            if f"{phase}_gbs" in row and peaks.get("copy_gbs_measured"):
                row[f"{phase}_frac_measured_bandwidth"] = row[f"{phase}_gbs"] / peaks["copy_gbs_measured"]
            if f"{phase}_gbs" in row and peaks.get("datasheet_gbs"):
                row[f"{phase}_frac_datasheet_bandwidth"] = row[f"{phase}_gbs"] / peaks["datasheet_gbs"]
        _free(device)
    torch_row = next((r for r in rows if r["impl"] == LAYER_NORM_REFERENCE), None)
    for row in rows:
        for phase in ("fwd", "fwd_bwd"):
            if row is not torch_row and torch_row and f"{phase}_ms" in row and f"{phase}_ms" in torch_row:
                row[f"{phase}_speedup_vs_torch"] = torch_row[f"{phase}_ms"] / row[f"{phase}_ms"]
    return rows
