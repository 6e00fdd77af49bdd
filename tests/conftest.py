"""Fixtures shared by the test files."""

import importlib.util
import os

import pytest

# One CPU thread count for the whole session: the trainer otherwise picks it from the load on
# the machine (training.cpu_threads), and runs compared bit for bit must use the same count.
os.environ.setdefault(
    "OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)


# The tiny model most model tests build: 2 layers of 3 heads of 32, fast on a CPU, odd enough
# (3 heads, 160-wide feed-forward) to catch a reshape that only works for powers of two.
TINY_CONFIG = dict(
    vocab_size=1000,
    hidden_size=96,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=160,
    max_position_embeddings=40,
)


@pytest.fixture
def tiny():
    """tiny(**overrides): the tiny RobertaConfig (TINY_CONFIG) with any field changed."""
    from roberta_scratch import RobertaConfig

    return lambda **overrides: RobertaConfig(**{**TINY_CONFIG, **overrides})


@pytest.fixture(scope="session")
def docstrings() -> list:
    """The standard library's docstrings (about 2 MB): the embedded default corpus, real prose."""
    from roberta_scratch.data.corpus import default_corpus

    return list(default_corpus())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A corpus (a .txt, a .jsonl, a Latin-1 file and an empty one), a 400-token BPE, and the
    data prepared from them, as pretraining tests use them."""
    from pretraining_helpers import WORDS, make_corpus

    from roberta_scratch.data.packed import prepare
    from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("pretrain")
    make_corpus(root / "corpus")
    tok = ByteLevelBPETokenizer.train(
        iter([" ".join(WORDS)] * 50 + ["Café crème."]), vocab_size=400, show_progress=False
    )
    tok.save_pretrained(str(root / "tok"))
    with pytest.warns(UserWarning, match=r"latin1\.txt: 1 line\(s\) are not valid UTF-8"):
        prepare(
            [str(root / "corpus")],
            str(root / "tok"),
            str(root / "data"),
            seq_len=32,
            val_fraction=0.1,
            show_progress=False,
            num_workers=1,
        )
    return root


@pytest.fixture(scope="module")
def prepared_sentences(prepared):
    """The `prepared` corpus prepared again with sentence boundaries (prepare --sentences), for the
    pair formats: returns its data directory."""
    import warnings

    from roberta_scratch.data.packed import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus's Latin-1 file, which `prepared` checks the warning for
        prepare(
            [str(prepared / "corpus")],
            str(prepared / "tok"),
            str(prepared / "data_sents"),
            seq_len=32,
            val_fraction=0.1,
            show_progress=False,
            num_workers=1,
            sentences=True,
        )
    return str(prepared / "data_sents")


@pytest.fixture
def reference_dir():
    path = os.environ.get("ROBERTA_REFERENCE_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("ROBERTA_REFERENCE_DIR is not set (it points at the real roberta-base tokenizer files)")
    return path


def pytest_configure(config):
    # Triton chooses compiler or CPU interpreter for its own tl.* helpers when it is
    # first imported, and transformers imports it during collection. Import it here in
    # interpreter mode, then unset the variable: the kernel tests set TRITON_INTERPRET=1
    # per test and every other test sees it unset. `-m gpu` sessions keep the compiler.
    if importlib.util.find_spec("triton") is None or config.getoption("markexpr") == "gpu":
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
