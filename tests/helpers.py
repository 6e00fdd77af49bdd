"""Test helpers: tiny random Hugging Face models, padded batches, the Triton mode switch."""

import pytest
import torch

from roberta_scratch.testing import padded_batch  # noqa: F401  (one helper for every test file)


def hf_config(**overrides):
    """A transformers RobertaConfig for a tiny, odd-shaped model (eager attention: the reference)."""
    transformers = pytest.importorskip("transformers")
    kwargs = dict(
        vocab_size=1000,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=160,
        max_position_embeddings=40,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return transformers.RobertaConfig(**kwargs)


def random_hf_model(arch: str, seed: int = 0, **overrides):
    """A transformers model whose every parameter is random (LayerNorms and biases too), so a
    swapped or dropped key cannot go unnoticed."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(hf_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


SMALL_TEXTS = ["the cat sat on the mat and the dog ran to the house"] * 30


def tiny_model_folder(path, cls=None, texts=SMALL_TEXTS, vocab_size=280, max_positions=40, **config) -> str:
    """A folder as a user has one: a tiny random model (`cls`, default RobertaForMaskedLM; hidden
    32, one layer, unless `config` says otherwise) and the BPE tokenizer it was made with."""
    from roberta_scratch import RobertaConfig, RobertaForMaskedLM
    from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer.train(iter(texts), vocab_size=vocab_size, show_progress=False)
    shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = RobertaConfig(vocab_size=tok.vocab_size, max_position_embeddings=max_positions, **{**shape, **config})
    torch.manual_seed(0)
    (cls or RobertaForMaskedLM)(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def triton_mode_fixture(*modules: str):
    """An autouse fixture for kernel tests: Triton's interpreter for CPU tests, the compiled
    kernels for `gpu` tests. `modules` are the kernels submodules the tests exercise."""
    import roberta_kernels

    @pytest.fixture(autouse=True)
    def _triton_mode(request, monkeypatch):
        if request.node.get_closest_marker("gpu"):
            monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        else:
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        try:
            for module in modules:
                roberta_kernels.kernel_module(module)
        except RuntimeError as exc:  # triton was imported the other way round in this process
            pytest.skip(f"{exc}; tests/conftest.py imports it so, see tests/test_kernels_attention.py")

    return _triton_mode
