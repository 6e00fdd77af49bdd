"""kernels' registry: the built-ins, a user's implementation by name or MODULE:FUNCTION, the model
calling it, and capabilities."""

import pytest
import torch

import roberta_kernels
from roberta_kernels.registry import eager_attention, get, names, register, torch_layer_norm
from roberta_scratch import RobertaConfig, RobertaForMaskedLM
from roberta_scratch.testing import padded_batch

CALLS = {"attention": 0, "layer_norm": 0}


def counted_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    CALLS["attention"] += 1
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)


def counted_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    CALLS["layer_norm"] += 1
    return torch_layer_norm(x, weight, bias, eps, residual, dropout_p)


def test_the_built_ins():
    assert names("attention")[:3] == ["eager", "sdpa", "triton"] and names("layer_norm") == ["torch", "triton"]
    if roberta_kernels.registry.flex_available():
        assert "flex" in names("attention") and not get("attention", "flex").dropout
    assert get("attention", "triton").unsupported(head_dim=48) == "triton does not claim head dim 48"
    assert get("attention", "triton").unsupported(head_dim=64, dtype=torch.bfloat16) is None


def test_builtins_agree_with_the_reference():
    q, k, v = torch.randn(3, 2, 3, 9, 16, dtype=torch.float64).unbind(0)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4])[:, None]
    want = roberta_kernels.attention_reference(q, k, v, mask)
    for name in ("eager", "sdpa"):
        got = get("attention", name).fn(q, k, v, key_padding_mask=mask)
        # padded rows are free; the reference computes in fp32
        torch.testing.assert_close(got * mask[:, None, :, None], want, rtol=1e-5, atol=1e-6)


def test_a_user_implementation_by_name_runs_in_the_model(tiny):
    register("attention", "counted", counted_attention, dtypes=(torch.float32,), dropout=False)
    register("layer_norm", "counted_ln", counted_layer_norm)
    torch.manual_seed(0)
    ref = RobertaForMaskedLM(tiny(attention="eager")).eval()
    mine = RobertaForMaskedLM(tiny(attention="counted", layer_norm="counted_ln")).eval()
    mine.load_state_dict(ref.state_dict())
    ids, mask = padded_batch(100, (7, 4))
    before = dict(CALLS)
    torch.testing.assert_close(mine(ids, mask).logits, ref(ids, mask).logits)
    assert CALLS["attention"] - before["attention"] == 2 and CALLS["layer_norm"] - before["layer_norm"] == 4
    assert get("attention", "counted").unsupported(dropout_p=0.1) == "counted does not claim dropout"


def bf16_only(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)


def test_module_function_is_imported_on_use_and_keeps_registered_capabilities():
    impl = get("attention", "test_registry:bf16_only")
    assert impl.fn is bf16_only and impl.dtypes == roberta_kernels.registry.FLOAT_DTYPES  # nothing declared
    register("attention", "bf16_only", bf16_only, dtypes=(torch.bfloat16,))
    assert get("attention", "test_registry:bf16_only").dtypes == (torch.bfloat16,)  # its registration
    assert RobertaConfig(attention="test_registry:counted_attention").attention == "test_registry:counted_attention"


def test_unknown_names_list_the_registered_ones(tiny):
    with pytest.raises(
        ValueError,
        match=r"unknown attention implementation 'flash': registered are eager, sdpa, "
        r"triton.*MODULE:FUNCTION",
    ):
        get("attention", "flash")
    with pytest.raises(ValueError, match="test_registry has no 'nope'"):
        get("attention", "test_registry:nope")
    # a config takes any name; building the model resolves it (reading a config imports nothing)
    cfg = tiny(layer_norm="fused")
    with pytest.raises(ValueError, match="unknown layer_norm implementation 'fused'"):
        RobertaForMaskedLM(cfg)
    with pytest.raises(ValueError, match="a non-empty string without ':'"):
        register("attention", "a:b", counted_attention)


def test_the_cli_takes_any_name(tmp_path):
    from roberta_scratch import cli

    args = cli.build_parser().parse_args(
        ["pretrain", "--data", "d", "--out", "o", "--attention", "test_registry:counted_attention"]
    )
    assert args.attention == "test_registry:counted_attention"
