"""The fused residual-add + dropout + LayerNorm kernel against the fp32 reference.

Forward, dx, d_residual, dweight, dbias and (when returned) the pre-norm sum.
The kernel runs on the CPU through Triton's interpreter, set up as in
tests/test_kernels_attention.py (see its docstring); tests marked `gpu` run
the compiled kernel on CUDA.

Tolerances are max errors against the fp32 reference evaluated on the same
(dtype-rounded) inputs, with x, residual ~ N(0, 1):
  fp32  atol 1e-4, rtol 1e-4: both sides compute in fp32; they differ in
        summation order (dweight, dbias sum over up to a few hundred rows).
  bf16  atol 3e-2, rtol 2e-2: outputs of size ~4 are rounded to bf16 (8 bits).
"""

import pytest
import torch
from helpers import triton_mode_fixture

import roberta_kernels
from roberta_kernels import layer_norm, layer_norm_dropout_mask, layer_norm_reference

pytestmark = pytest.mark.skipif(not roberta_kernels.triton_available(), reason="triton is not installed")

FP32 = (torch.float32, 1e-4, 1e-4)
BF16 = (torch.bfloat16, 3e-2, 2e-2)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


_triton_mode = triton_mode_fixture("layernorm")


def run_and_compare(
    shape, dtype, atol, rtol, residual=True, dropout_p=0.0, prenorm=False, residual_dtype=None, device="cpu", seed=99
):
    """Forward and backward through the kernel and the reference; assert they agree."""
    generator = torch.Generator().manual_seed(shape[-1] * 7 + len(shape))
    N = shape[-1]
    if N == 1:  # every output is the bias; rstd = 1/sqrt(eps) ~ 316 amplifies the reference's rounding of h - mean
        atol = max(atol, 1e-3)

    def randn(*size, scale=1.0, dtype=torch.float32):
        return (scale * torch.randn(*size, generator=generator)).to(device=device, dtype=dtype)

    x = randn(*shape, dtype=dtype).requires_grad_()
    r = randn(*shape, dtype=residual_dtype or dtype).requires_grad_() if residual else None
    w = (1.0 + randn(N, scale=0.1)).requires_grad_()
    b = randn(N, scale=0.1).requires_grad_()
    out = layer_norm(x, w, b, 1e-5, residual=r, dropout_p=dropout_p, seed=seed, return_prenorm=prenorm)
    y, h = out if prenorm else (out, None)
    dy = randn(*shape, dtype=y.dtype)
    dh = randn(*shape, dtype=y.dtype) if prenorm else None
    if prenorm:
        torch.autograd.backward([y, h], [dy, dh])
    else:
        y.backward(dy)

    xr = x.detach().float().requires_grad_()
    rr = r.detach().float().requires_grad_() if residual else None
    wr, br = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    keep = layer_norm_dropout_mask(seed, shape, dropout_p, device) if dropout_p > 0 else None
    ref = layer_norm_reference(xr, wr, br, 1e-5, rr, dropout_p, prenorm, keep)
    yr, hr = ref if prenorm else (ref, None)
    if prenorm:
        torch.autograd.backward([yr, hr], [dy.float(), dh.float()])
    else:
        yr.backward(dy.float())

    expected_dtype = dtype if not residual else torch.promote_types(dtype, r.dtype)
    assert y.dtype == expected_dtype and y.shape == x.shape
    pairs = [("y", y, yr), ("dx", x.grad, xr.grad), ("dweight", w.grad, wr.grad), ("dbias", b.grad, br.grad)]
    if residual:
        pairs.append(("dresidual", r.grad, rr.grad))
    if prenorm:
        pairs.append(("prenorm", h, hr))
    for name, mine, theirs in pairs:
        torch.testing.assert_close(mine.float(), theirs, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    return x, r


def test_interpreter_runs_the_triton_code():
    assert roberta_kernels.use_triton(torch.zeros(2, 8))
    assert roberta_kernels.kernel_module("layernorm").INTERPRETED


# Odd row counts and hidden sizes: tails in both directions, several programs in the backward.
FAST_CASES = [
    ((1, 77), FP32, True),
    ((130, 1), FP32, True),
    ((3, 5, 130), FP32, False),
    ((77, 768), FP32, True),
    ((17, 1023), FP32, True),
    ((130, 1024), BF16, True),
    ((2, 9, 77), BF16, False),
    ((33, 4096), FP32, True),
]


@pytest.mark.parametrize(
    "shape, tol, residual",
    FAST_CASES,
    ids=[f"{'x'.join(map(str, s))}-{str(t[0])[6:]}-res{int(r)}" for s, t, r in FAST_CASES],
)
def test_matches_reference(shape, tol, residual):
    run_and_compare(shape, *tol, residual=residual)


@pytest.mark.slow
@pytest.mark.parametrize("tol", [FP32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("N", [1, 77, 130, 768, 1023, 1024, 4096])
@pytest.mark.parametrize("M", [1, 77, 130, 1023])
def test_matches_reference_all_shapes(M, N, residual, tol):
    run_and_compare((M, N), *tol, residual=residual, dropout_p=0.1)


@pytest.mark.parametrize(
    "shape, tol", [((77, 130), FP32), ((40, 768), BF16), ((9, 4001), FP32)], ids=["float32", "bfloat16", "float32-wide"]
)
def test_dropout_and_prenorm_match_reference_with_the_helper_mask(shape, tol):
    run_and_compare(shape, *tol, residual=True, dropout_p=0.1, prenorm=True)


PIPELINED_CASES = [  # (rows, hidden, residual, dropout_p, prenorm): hidden 768 is padded to a 1024-wide tile
    (77, 768, True, 0.1, True),
    (9, 768, False, 0.0, False),
    (31, 768, False, 0.1, False),
    (45, 768, True, 0.0, True),
]


@pytest.mark.parametrize(
    "M, N, residual, dropout_p, prenorm",
    PIPELINED_CASES,
    ids=[f"{m}x{n}-res{int(r)}-p{p}-pre{int(h)}" for m, n, r, p, h in PIPELINED_CASES],
)
def test_pipelined_multi_row_backward(M, N, residual, dropout_p, prenorm):
    """16-byte aligned rows at hidden 513-1024 take the pipelined backward of 2 rows a step (see
    layer_norm_configs): odd row counts leave a last tile of 1 row and programs with unequal tile counts."""
    configs = roberta_kernels.kernel_module("layernorm").layer_norm_configs
    assert configs(N, aligned=True)["bwd"].BLOCK_M == 2 and configs(N, aligned=True)["bwd"].loop_stages == 3
    assert configs(N, aligned=False)["bwd"].BLOCK_M == 1 and configs(N, aligned=False)["bwd"].loop_stages == 1
    run_and_compare((M, N), *BF16, residual=residual, dropout_p=dropout_p, prenorm=prenorm)


@pytest.mark.parametrize("hidden", [16, 77, 512, 768, 1000, 4096])
def test_tuning_tables_start_with_the_pick_and_are_all_compiled(hidden):
    """layer_norm_candidates: the first is layer_norm_configs' pick (all the interpreter and the CPU
    run), the others only lower register pressure, and roberta_kernels.compile_check compiles every one."""
    module = roberta_kernels.kernel_module("layernorm")
    for aligned in (True, False):
        tables, pick = module.layer_norm_candidates(hidden, aligned), module.layer_norm_configs(hidden, aligned)
        assert tables["fwd"][0] == pick["fwd"] and tables["bwd"][0] == pick["bwd"]
        for alt in tables["fwd"][1:]:
            assert (alt.BLOCK_N, alt.num_warps, alt.BLOCK_M) == (
                pick["fwd"].BLOCK_N,
                pick["fwd"].num_warps,
                pick["fwd"].BLOCK_M // 2,
            )
        for alt in tables["bwd"][1:]:
            assert (alt.BLOCK_M, alt.BLOCK_N, alt.num_warps, alt.loop_stages) == (
                pick["bwd"].BLOCK_M,
                pick["bwd"].BLOCK_N,
                pick["bwd"].num_warps,
                2,
            )
    block_n = max(16, 1 << (hidden - 1).bit_length())
    for arch in (80, 90):
        compiled = {
            (kernel.__name__, tuple(sorted(c.items())), tuple(sorted(o.items())))
            for _, kernel, _, c, o, *_ in module.aot_specs(arch)
            if c.get("BLOCK_N") == block_n
        }
        for aligned in (True, False):
            tables = module.layer_norm_candidates(hidden, aligned)
            for name, kernel in (("fwd", module._layer_norm_fwd_kernel), ("bwd", module._layer_norm_bwd_kernel)):
                for cfg in tables[name]:
                    meta = tuple(sorted((module._bwd_meta(cfg) if name == "bwd" else module.tile_meta(cfg)).items()))
                    options = tuple(sorted(cfg.options().items()))
                    assert any(k == kernel.__name__ and set(meta) <= set(c) and o == options for k, c, o in compiled), (
                        arch,
                        hidden,
                        aligned,
                        name,
                        cfg,
                    )


@pytest.mark.parametrize("N", [768, 200])
def test_every_tuning_candidate_computes_the_same_layer_norm(monkeypatch, N):
    """Each kernel's other candidates, forced first, match the reference too (autotune may pick them)."""
    module = roberta_kernels.kernel_module("layernorm")
    tables = module.layer_norm_candidates
    assert len(tables(N)["fwd"]) > 1 and len(tables(N, aligned=True)["bwd"]) > 1
    monkeypatch.setattr(
        module,
        "layer_norm_candidates",
        lambda hidden, aligned=True: {k: v[1:] or v for k, v in tables(hidden, aligned).items()},
    )
    run_and_compare((37, N), *BF16, residual=True, dropout_p=0.1, prenorm=True)
    run_and_compare((37, N), *FP32, residual=False, dropout_p=0.0)


def test_on_cuda_autotune_gets_every_candidate_once_per_kernel_and_table(monkeypatch):
    """The CUDA branch of the launcher, with triton.autotune recorded instead of timed: one wrapper
    per kernel and table, every candidate's constexprs (the backward's row-loop depth included)
    and warps, keyed on the hidden size and the flags, and the caller's constexprs passed on."""
    import triton

    module = roberta_kernels.kernel_module("layernorm")
    made, launched = [], []

    class Tuned:  # what triton.autotune returns: indexed by the grid, then called
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append((self.kernel, grid, kwargs))

    def fake_autotune(configs, key):
        made.append(([(c.kwargs, c.num_warps, c.num_stages) for c in configs], key))
        return Tuned

    monkeypatch.setattr(triton, "autotune", fake_autotune)
    monkeypatch.setattr(module, "_AUTOTUNED", {})
    tables = module.layer_norm_candidates(768, aligned=True)
    flags = dict(HAS_RESIDUAL=True, HAS_DROPOUT=True, HAS_DPRENORM=False, STORE_DRESIDUAL=True)
    for _ in range(2):
        module._launch(module._layer_norm_bwd_kernel, lambda meta: (4,), (), flags, tables["bwd"], torch.device("cuda"))
    assert len(made) == 1  # made once, then reused
    configs, key = made[0]
    assert key == ["N", "HAS_RESIDUAL", "HAS_DROPOUT", "HAS_DPRENORM", "STORE_DRESIDUAL"]
    assert configs == [
        ({"BLOCK_M": c.BLOCK_M, "BLOCK_N": c.BLOCK_N, "LOOP_STAGES": c.loop_stages}, c.num_warps, c.num_stages)
        for c in tables["bwd"]
    ]
    assert len(tables["bwd"]) == 2 and len(launched) == 2
    assert all(
        kernel is module._layer_norm_bwd_kernel and kw == {**flags, "enable_fp_fusion": True}
        for kernel, _, kw in launched
    )
    assert module.tuned_configs() == {}  # nothing timed, so nothing picked


def test_the_interpreter_runs_the_first_candidate_without_autotuning():
    module = roberta_kernels.kernel_module("layernorm")
    x = torch.randn(9, 768, requires_grad=True)
    layer_norm(x, torch.ones(768), torch.zeros(768), dropout_p=0.1, seed=0).sum().backward()
    assert module._AUTOTUNED == {} and module.tuned_configs() == {}


def test_unaligned_rows_take_the_unpipelined_backward():
    """Rows sliced to 766 of 768 columns are not 16-byte multiples: one row a step, nothing pipelined."""
    module = roberta_kernels.kernel_module("layernorm")
    x = torch.randn(33, 768)[:, :766]
    assert not module._rows_aligned(x) and module._rows_aligned(torch.randn(33, 768))
    run_and_compare((33, 766), *FP32, residual=True, dropout_p=0.1)


def test_bf16_branch_on_fp32_residual_stream():
    """Under autocast a bf16 sublayer output meets an fp32 residual: the sum and output stay fp32."""
    x, r = run_and_compare((65, 130), torch.bfloat16, 3e-2, 2e-2, residual=True, residual_dtype=torch.float32)
    assert r.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16


def test_without_dropout_dx_equals_dresidual():
    x, r = run_and_compare((20, 64), *FP32, residual=True)
    torch.testing.assert_close(x.grad, r.grad, atol=0, rtol=0)


def test_dropout_keep_rate_and_seeds():
    p = 0.1
    keep = layer_norm_dropout_mask(5, (4, 250, 128), p)  # 128000 draws
    assert keep.shape == (4, 250, 128) and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    assert torch.equal(keep, layer_norm_dropout_mask(5, (4, 250, 128), p))
    assert (keep != layer_norm_dropout_mask(6, (4, 250, 128), p)).float().mean() > 0.1  # 2p(1-p) = 18%
    # p near 1 keeps almost nothing (the 16-bit threshold must not wrap around), p = 0 everything
    assert layer_norm_dropout_mask(5, (40, 77), 0.9999).float().mean() < 0.01
    assert layer_norm_dropout_mask(5, (40, 77), 0.0).all()


def test_seed_none_draws_from_torch_generator():
    x = torch.randn(16, 64)
    w, b = torch.ones(64), torch.zeros(64)
    torch.manual_seed(0)
    first = layer_norm(x, w, b, dropout_p=0.5)
    second = layer_norm(x, w, b, dropout_p=0.5)
    torch.manual_seed(0)
    assert torch.equal(first, layer_norm(x, w, b, dropout_p=0.5))
    assert not torch.equal(first, second)


def test_unsupported_inputs_raise():
    x = torch.randn(4, 4097)
    with pytest.raises(ValueError, match="4096"):
        layer_norm(x, torch.ones(4097), torch.zeros(4097))
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="weight and bias"):
        layer_norm(x, None, None)
    with pytest.raises(ValueError, match="residual"):
        layer_norm(x, torch.ones(8), torch.zeros(8), residual=torch.randn(4, 9))
    with pytest.raises(ValueError, match="dropout_p"):
        layer_norm(x, torch.ones(8), torch.zeros(8), dropout_p=1.0)
    with pytest.raises(TypeError, match="float32; got torch.float64$"):
        layer_norm(x, torch.ones(8), torch.zeros(8), residual=x.double())


def test_fallback_without_interpreter_matches(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x, r = torch.randn(6, 40), torch.randn(6, 40)
    w, b = torch.rand(40), torch.rand(40)
    assert not roberta_kernels.use_triton(x)
    torch.testing.assert_close(
        roberta_kernels.layer_norm(x, w, b, residual=r), torch.nn.functional.layer_norm(x + r, (40,), w, b, 1e-5)
    )


# ---------------------------------------------------------------------------
# Compiled kernel on a GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("tol", [FP32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("N", [1, 77, 768, 1023, 1024, 4096])
@pytest.mark.parametrize("M", [1, 130, 16384])
def test_gpu_matches_reference(M, N, tol):
    run_and_compare((M, N), *tol, residual=True, dropout_p=0.1, prenorm=True, device="cuda")
