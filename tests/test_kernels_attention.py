"""The Triton attention kernel against the fp32 reference, forward and every gradient.

Without a GPU the kernel code itself runs on the CPU through Triton's
interpreter: an autouse fixture sets TRITON_INTERPRET=1 for each test, and
roberta_kernels.kernel_module decorates the kernels to match. Triton also fixes the
mode of its own tl.* helpers when it is first imported, and transformers
imports it during collection, so tests/conftest.py imports triton in
interpreter mode first (and unsets the variable for every other test); in a
process where that did not happen these tests skip and say why. Tests marked
`gpu` run the compiled kernels on CUDA, in a `-m gpu` session.

Tolerances are max errors against the fp32 reference evaluated on the same
(dtype-rounded) inputs, with q, k, v ~ N(0, 1):
  fp32  atol 1e-4, rtol 1e-4: the interpreter matches to ~1e-6; on a GPU the
        dots run as tf32x3 (fp32-level, ~1e-5).
  bf16  atol 3e-2, rtol 2e-2: bf16 keeps 8 bits, and P and dS are rounded to
        bf16 before their matmuls (as in FlashAttention); observed max errors
        are ~1e-2 on outputs and gradients of size ~1.
  fp16  atol 5e-3, rtol 5e-3: 11 bits.
"""

import pytest
import torch
from helpers import triton_mode_fixture

import roberta_kernels
from roberta_kernels import attention, attention_dropout_mask, attention_reference

pytestmark = pytest.mark.skipif(not roberta_kernels.triton_available(), reason="triton is not installed")

FP32 = (torch.float32, 1e-4, 1e-4)
BF16 = (torch.bfloat16, 3e-2, 2e-2)
FP16 = (torch.float16, 5e-3, 5e-3)
PADDINGS = ("none", "right", "left", "holes", "single")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


_triton_mode = triton_mode_fixture("flash_attention")


def make_mask(kind, B, T, generator, device="cpu"):
    """(B, T) bool key-padding mask, True for real tokens, or None.

    right:  random real lengths, padding at the end (what a tokenizer produces);
    left:   the same, padding at the start: the real keys start inside a tile;
    holes:  random real tokens anywhere, including leading padding;
    single: batch row 0 is all padding but one token in the middle;
    empty:  batch row 0 has no real token at all.
    """
    if kind == "none":
        return None
    if kind == "right":
        lengths = torch.randint(1, T + 1, (B,), generator=generator)
        lengths[-1] = T
        mask = torch.arange(T)[None, :] < lengths[:, None]
    elif kind == "left":
        lengths = torch.randint(1, T + 1, (B,), generator=generator)
        mask = torch.arange(T)[None, :] >= T - lengths[:, None]
    elif kind == "holes":
        mask = torch.rand(B, T, generator=generator) < 0.6
        mask[:, torch.randint(0, T, (1,), generator=generator)] = True
    elif kind == "single":
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0] = False
        mask[0, T // 2] = True
    elif kind == "empty":
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0] = False
    else:
        raise ValueError(kind)
    return mask.to(device)


def run_and_compare(B, H, T, D, dtype, atol, rtol, padding, dropout_p=0.0, device="cpu", seed=1234):
    """Forward and backward through the kernel and the fp32 reference; assert they agree."""
    generator = torch.Generator().manual_seed(T * 1000 + D)
    q, k, v, do = (torch.randn(B, H, T, D, generator=generator).to(device=device, dtype=dtype) for _ in range(4))
    mask = make_mask(padding, B, T, generator, device)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=dropout_p, seed=seed)
    out.backward(do)

    ref_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    keep = attention_dropout_mask(seed, B, H, T, dropout_p, device) if dropout_p > 0 else None
    ref = attention_reference(*ref_inputs, key_padding_mask=mask, dropout_p=dropout_p, dropout_mask=keep)
    ref.backward(do.float())

    assert out.dtype == dtype and out.shape == (B, H, T, D)
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol, msg=lambda m: f"output: {m}")
    for name, mine, theirs in zip("qkv", (q, k, v), ref_inputs, strict=True):
        assert mine.grad.dtype == dtype
        torch.testing.assert_close(
            mine.grad.float(), theirs.grad, atol=atol, rtol=rtol, msg=lambda m, name=name: f"d{name}: {m}"
        )
    return out, mask, (q.grad, k.grad, v.grad)


def test_interpreter_runs_the_triton_code():
    x = torch.zeros(1, 1, 16, 32)
    assert roberta_kernels.use_triton(x)
    assert roberta_kernels.kernel_module("flash_attention").INTERPRETED


# A cross-section that runs in seconds; the full product is the slow test below.
FAST_CASES = [
    *[(T, 64, "right", FP32) for T in (1, 17, 77, 128, 130, 257)],
    (130, 32, "right", FP32),
    (130, 128, "right", FP32),
    (77, 64, "none", FP32),
    (130, 64, "holes", FP32),
    (77, 32, "single", FP32),
    (17, 64, "empty", FP32),
    (17, 64, "right", BF16),
    (130, 128, "holes", BF16),
    (77, 32, "single", BF16),
    (130, 64, "none", BF16),
    (77, 64, "right", FP16),
    (130, 64, "left", FP32),
    (257, 32, "left", BF16),
    (150, 64, "left", BF16),
]


@pytest.mark.parametrize(
    "T, D, padding, tol", FAST_CASES, ids=[f"T{T}-D{D}-{p}-{str(t[0])[6:]}" for T, D, p, t in FAST_CASES]
)
def test_matches_reference(T, D, padding, tol):
    run_and_compare(2, 2, T, D, *tol, padding)


@pytest.mark.slow
@pytest.mark.parametrize("tol", [FP32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("T", [1, 17, 77, 128, 130, 257])
def test_matches_reference_all_shapes(T, D, padding, tol):
    run_and_compare(2, 3, T, D, *tol, padding)


@pytest.mark.parametrize("padding", ["single", "holes", "empty"])
def test_padded_rows_are_exactly_zero(padding):
    out, mask, grads = run_and_compare(2, 2, 77, 32, *FP32, padding)
    padded = ~mask
    assert (out.detach().transpose(1, 2)[padded] == 0).all()
    for grad in grads:  # padded queries get no gradient; padded keys and values receive none
        assert (grad.transpose(1, 2)[padded] == 0).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "T, D, padding, tol", [(77, 64, "right", FP32), (130, 32, "holes", BF16), (33, 128, "single", FP32)]
)
def test_dropout_matches_reference_with_the_helper_mask(T, D, padding, tol):
    run_and_compare(2, 2, T, D, *tol, padding, dropout_p=0.3)


def test_dropout_keep_rate_and_seeds():
    p = 0.2
    keep = attention_dropout_mask(7, 2, 4, 128, p)  # 131072 draws
    assert keep.shape == (2, 4, 128, 128) and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    assert torch.equal(keep, attention_dropout_mask(7, 2, 4, 128, p))
    other = attention_dropout_mask(8, 2, 4, 128, p)
    assert (keep != other).float().mean() > 0.2  # independent masks differ on 2p(1-p) = 32% of elements
    # each head and each row draws its own bits
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0, 0], keep[0, 0, 1])
    # p near 1 keeps almost nothing (the 16-bit threshold must not wrap around), p = 0 everything
    assert attention_dropout_mask(7, 1, 2, 77, 0.9999).float().mean() < 0.01
    assert attention_dropout_mask(7, 1, 2, 77, 0.0).all()


def test_dropout_rate_is_p_rounded_to_eight_bits():
    """Each decision compares 8 random bits with round(p * 256): the drop rate is p rounded to 2**-8,
    within 2**-9 of p (the bias the exact 1 / (1 - p) scaling keeps), at every one of the 16 byte
    positions of a Philox draw, which are keys n mod 64 (kernels/roberta_kernels/flash_attention.py, _dropout_keep)."""
    for p in (0.1, 0.3):
        keep = attention_dropout_mask(11, 1, 4, 512, p).float()  # 2**20 draws
        rate = 1 - round(p * 256) / 256
        assert abs(rate - (1 - p)) <= 2**-9
        sigma = (rate * (1 - rate) / keep.numel()) ** 0.5
        assert abs(keep.mean().item() - rate) < 5 * sigma
        by_key = keep.reshape(-1, 64).mean(0)  # 16384 draws per position
        assert (by_key - rate).abs().max().item() < 5 * sigma * 8


HOPPER_CASES = [
    (130, 64, "left", BF16, 0.0),
    (77, 64, "holes", BF16, 0.2),
    (33, 128, "right", BF16, 0.2),
    (150, 32, "none", FP16, 0.1),
]


@pytest.mark.parametrize(
    "T, D, padding, tol, dropout_p",
    HOPPER_CASES,
    ids=[f"T{T}-D{D}-{p}-{str(t[0])[6:]}-p{dp}" for T, D, p, t, dp in HOPPER_CASES],
)
def test_hopper_launch_in_the_interpreter(monkeypatch, T, D, padding, tol, dropout_p):
    """The launch a Hopper GPU gets (sm_90 tiles: 128-key forward tiles, 64-key dQ tiles with dropout;
    tiles loaded and stored through TMA descriptors, rows past T zero-filled), run through the
    interpreter: the same kernels, forward and every gradient, as in the tests above."""
    module = roberta_kernels.kernel_module("flash_attention")
    monkeypatch.setattr(module, "_arch", lambda device: 90)
    x = torch.randn(2, 2, T, D).to(tol[0])
    assert module._use_tma(90, x, x.transpose(1, 2).contiguous().transpose(1, 2))
    # the descriptor path runs for 16-bit inputs (fp32 keeps cp.async: module.tma_kernels)
    assert "fwd" in module.tma_kernels(90, D, tol[0], dropout_p > 0) or tol[0] == torch.float32
    run_and_compare(2, 2, T, D, *tol, padding, dropout_p=dropout_p)


def test_hopper_launch_falls_back_to_cp_async_on_unaligned_strides(monkeypatch):
    """TMA needs 16-byte aligned strides: heads sliced from rows of 68 bf16 (136 bytes) take the
    pointer path on sm_90, with the same results."""
    module = roberta_kernels.kernel_module("flash_attention")
    monkeypatch.setattr(module, "_arch", lambda device: 90)
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 45, 68, generator=generator).to(torch.bfloat16)[..., :64] for _ in range(3))
    assert not module._use_tma(90, q) and module._use_tma(90, q.contiguous())
    mask = make_mask("right", 1, 45, generator)
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=0.1, seed=3)
    keep = attention_dropout_mask(3, 1, 2, 45, 0.1)
    ref = attention_reference(q.float(), k.float(), v.float(), key_padding_mask=mask, dropout_p=0.1, dropout_mask=keep)
    torch.testing.assert_close(out.float(), ref, atol=BF16[1], rtol=BF16[2])


def test_tuning_tables_start_with_the_default_and_are_all_compile_checked():
    """Each kernel's autotune candidates (attention_candidates) start with attention_configs' pick, the
    one the interpreter and the CPU always run; roberta_kernels.compile_check compiles every candidate."""
    module = roberta_kernels.kernel_module("flash_attention")
    kernels_by_name = {
        "fwd": module._attn_fwd_kernel,
        "dkdv": module._attn_bwd_dkdv_kernel,
        "dq": module._attn_bwd_dq_kernel,
    }
    for arch in (80, 90):
        compiled = {
            (
                spec[1],
                spec[3]["HEAD_DIM"],
                "fp32" in spec[0],
                spec[3]["HAS_DROPOUT"],
                spec[3]["USE_TMA"],
                spec[3]["BLOCK_M"],
                spec[3]["BLOCK_N"],
                spec[4]["num_warps"],
                spec[4]["num_stages"],
            )
            for spec in module.aot_specs(arch)
            if "USE_TMA" in spec[3]
        }
        alternatives = 0
        for D in module.SUPPORTED_HEAD_DIMS:
            for dtype in (torch.bfloat16, torch.float32):
                for dropout in (False, True):
                    defaults = module.attention_configs(arch, D, dtype, dropout)
                    tma = module.tma_kernels(arch, D, dtype, dropout)
                    for name, kernel in kernels_by_name.items():
                        for use_tma in {False, name in tma}:
                            table = module.attention_candidates(arch, D, dtype, dropout, use_tma or name not in tma)
                            assert table[name][0] == defaults[name]
                            alternatives += len(table[name]) - 1
                            for cfg in table[name]:
                                assert (
                                    kernel,
                                    D,
                                    dtype == torch.float32,
                                    dropout,
                                    use_tma,
                                    cfg.BLOCK_M,
                                    cfg.BLOCK_N,
                                    cfg.num_warps,
                                    cfg.num_stages,
                                ) in compiled, (arch, D, dtype, name, cfg)
        assert alternatives > 0


def test_the_interpreter_runs_the_first_candidate_without_autotuning():
    module = roberta_kernels.kernel_module("flash_attention")
    q = torch.randn(1, 1, 20, 32, dtype=torch.bfloat16, requires_grad=True)
    attention(q, q, q, dropout_p=0.1, seed=0).sum().backward()
    assert module._AUTOTUNED == {} and module.tuned_configs() == {}


def test_seed_none_draws_from_torch_generator():
    q = torch.randn(1, 2, 40, 32)
    torch.manual_seed(0)
    first = attention(q, q, q, dropout_p=0.5)
    second = attention(q, q, q, dropout_p=0.5)
    torch.manual_seed(0)
    again = attention(q, q, q, dropout_p=0.5)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_strided_inputs_and_output_layout():
    """q, k, v sliced from a packed (B, T, 3, H, D) projection, as a model produces them."""
    B, T, H, D = 2, 45, 3, 32
    qkv = torch.randn(B, T, 3, H, D)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), non-contiguous
    mask = make_mask("right", B, T, torch.Generator().manual_seed(0))
    out = attention(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out, attention_reference(q, k, v, key_padding_mask=mask), atol=1e-4, rtol=1e-4)
    assert out.transpose(1, 2).is_contiguous()  # (B, T, H, D) in memory: merging heads is free


def test_softmax_scale_and_int_mask():
    B, H, T, D = 1, 2, 20, 64
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, 15:] = 0
    out = attention(q, k, v, key_padding_mask=mask, softmax_scale=0.3)
    ref = attention_reference(q, k, v, key_padding_mask=mask.bool(), softmax_scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scale", [-0.2, 0.0])
@pytest.mark.parametrize("padding", ["none", "right"])
def test_negative_and_zero_softmax_scale(scale, padding):
    """The unmasked key tiles take the row max before scaling (scale >= 0); a negative scale goes onto k."""
    B, H, T, D = 2, 2, 150, 32  # 150 keys: full tiles and a tail under every tile config
    generator = torch.Generator().manual_seed(5)
    q, k, v, do = (torch.randn(B, H, T, D, generator=generator) for _ in range(4))
    mask = make_mask(padding, B, T, generator)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    theirs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*mine, key_padding_mask=mask, softmax_scale=scale)
    ref = attention_reference(*theirs, key_padding_mask=mask, softmax_scale=scale)
    out.backward(do)
    ref.backward(do)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for name, a, r in zip("qkv", mine, theirs, strict=True):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("D", [16, 48, 256])
def test_unsupported_head_dim_names_the_supported_ones(D):
    q = torch.randn(1, 1, 8, D)
    with pytest.raises(ValueError, match=r"\(32, 64, 128\)"):
        attention(q, q, q)


def test_bad_inputs_raise():
    q = torch.randn(1, 2, 8, 32)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, q, q, key_padding_mask=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(TypeError, match="dtype"):
        attention(q, q.double(), q)
    with pytest.raises(TypeError, match="got torch.float32, torch.float64, torch.float32$"):
        attention(q, q.double(), q)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, q, q, dropout_p=1.0)


def test_fallback_without_interpreter_matches(monkeypatch):
    """Without TRITON_INTERPRET, CPU tensors take the reference path with the same semantics."""
    monkeypatch.delenv("TRITON_INTERPRET")
    q = torch.randn(2, 2, 30, 48)  # a head dim the kernel refuses is fine for the fallback
    mask = make_mask("single", 2, 30, torch.Generator().manual_seed(0))
    assert not roberta_kernels.use_triton(q)
    torch.testing.assert_close(
        roberta_kernels.attention(q, q, q, key_padding_mask=mask), attention_reference(q, q, q, key_padding_mask=mask)
    )


# ---------------------------------------------------------------------------
# Compiled kernels on a GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("tol", [FP16, BF16, FP32], ids=["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("padding", ["none", "right", "holes", "single", "empty"])
@pytest.mark.parametrize("T, D", [(1, 64), (77, 32), (130, 128), (257, 64), (512, 64), (1023, 128)])
def test_gpu_matches_reference(T, D, padding, tol):
    run_and_compare(3, 4, T, D, *tol, padding, device="cuda")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("tol", [BF16, FP32], ids=["bfloat16", "float32"])
def test_gpu_dropout_matches_reference(tol):
    run_and_compare(2, 4, 300, 64, *tol, "right", dropout_p=0.1, device="cuda")
    keep = attention_dropout_mask(3, 4, 8, 512, 0.1, "cuda")
    assert abs(keep.float().mean().item() - 0.9) < 0.01
