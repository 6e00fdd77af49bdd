"""Data preparation, packing and the trainer: resume, crashes, NaN, SIGINT, DDP, learning."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from pretraining_helpers import WORDS, args_for, losses, small_config

from roberta_scratch.config import RobertaConfig
from roberta_scratch.data.corpus import iter_documents
from roberta_scratch.data.packed import TokenStream, prepare, tokenizer_dir
from roberta_scratch.data.packed_dataset import PackedDataset
from roberta_scratch.errors import TrainingError
from roberta_scratch.pretrain import TrainArgs, Trainer, pretrain
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer

# ----------------------------------------------------------------------------- data


def test_preparation_reports_latin1_and_empty_files_and_rerun_is_a_noop(prepared, capsys):
    meta = json.loads((prepared / "data" / "meta.json").read_text())
    report = meta["report"]
    assert [os.path.basename(p) for p in report["non_utf8_files"]] == ["latin1.txt"]
    assert [os.path.basename(p) for p in report["empty_files"]] == ["empty.txt"]
    assert report["documents"] == 121 and meta["dtype"] == "uint16"
    before = data_files(prepared / "data")
    prepare(
        [str(prepared / "corpus")],
        str(prepared / "tok"),
        str(prepared / "data"),
        seq_len=32,
        val_fraction=0.1,
        show_progress=False,
    )
    assert "already prepared" in capsys.readouterr().out
    assert before == data_files(prepared / "data")


def data_files(directory):
    """Every file under a data directory with its mtime, except the lock (which is not data)."""
    return {
        str(p.relative_to(directory)): p.stat().st_mtime_ns
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def test_stream_holds_every_document_followed_by_eos(prepared):
    tok = load_tokenizer(tokenizer_dir(str(prepared / "data")))
    with pytest.warns(UserWarning, match="latin1"):
        docs = list(iter_documents([str(prepared / "corpus")]))
    expected = {"train": [], "val": []}
    for i, doc in enumerate(docs):  # the documented split rule
        split = "val" if int((i + 1) * 0.1) > int(i * 0.1) else "train"
        expected[split] += tok.encode(doc, add_special_tokens=False) + [tok.eos_token_id]
    for split in ("train", "val"):
        stream = TokenStream(str(prepared / "data"), split)
        assert stream[0 : len(stream)].tolist() == expected[split]
        assert stream.doc_ends[-1] == len(stream)
        assert all(stream[int(e) - 1 : int(e)][0] == tok.eos_token_id for e in stream.doc_ends)


def test_full_sentences_packing_is_exact_and_loses_nothing(prepared):
    ds = PackedDataset(str(prepared / "data"), "train", seq_len=32, mode="full")
    stream = TokenStream(str(prepared / "data"), "train")
    blocks = [ds[i] for i in range(len(ds))]
    assert all(len(b) == 32 for b in blocks[:-1]) and 3 <= len(blocks[-1]) <= 32
    assert all(b[0] == 0 and b[-1] == 2 for b in blocks)
    assert torch.cat([b[1:-1] for b in blocks]).tolist() == stream[0 : len(stream)].tolist()


def test_doc_sentences_packing_never_crosses_documents(prepared):
    ds = PackedDataset(str(prepared / "data"), "train", seq_len=16, mode="doc")
    stream = TokenStream(str(prepared / "data"), "train")
    pieces = [ds[i][1:-1] for i in range(len(ds))]
    assert all(len(p) <= 14 for p in pieces)
    assert not any((p == 2).any() for p in pieces)  # no document's </s> inside a block
    starts = np.concatenate([[0], stream.doc_ends[:-1]])
    docs = [stream[int(a) : int(b) - 1].tolist() for a, b in zip(starts, stream.doc_ends, strict=True)]
    assert torch.cat(pieces).tolist() == [t for d in docs for t in d]


def test_bad_data_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared data directory"):
        PackedDataset(str(tmp_path))


# ----------------------------------------------------------------------------- trainer


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path / "straight")) == 0
    assert pretrain(args_for(prepared, tmp_path / "split", steps=8, save_every=4)) == 0
    # simulate a run that died after step 4: keep only the step-4 checkpoint, then resume
    ckpt = tmp_path / "split" / "ckpt"
    for name in os.listdir(ckpt):
        if name != "step_00000004.pt":
            os.remove(ckpt / name)
    assert pretrain(args_for(prepared, tmp_path / "split", resume=True)) == 0
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert len(a) == len(b) == 8 and a == b
    straight = torch.load(tmp_path / "straight" / "ckpt" / "step_00000008.pt", weights_only=True)["model"]
    resumed = torch.load(ckpt / "step_00000008.pt", weights_only=True)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_with_different_settings_is_refused(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path, steps=4)) == 0
    # --lr may change (test_resume); the error names the flag and both values, in one line
    with pytest.raises(
        TrainingError,
        match=r"^cannot resume from .*: --batch-size was 4, now 8\. A resumed run "
        r"continues .* \(--lr, --clip, --warmup and the run's length may change",
    ):
        pretrain(args_for(prepared, tmp_path, steps=4, batch_size=8, resume=True))


def test_kill_during_save_keeps_the_previous_checkpoint(prepared, tmp_path, monkeypatch):
    import roberta_scratch.training as trainer_module

    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **kw):  # the second checkpoint dies halfway through writing
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError("killed")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(trainer_module.torch, "save", dying_save)
    with pytest.raises(OSError, match="killed"):
        pretrain(args_for(prepared, tmp_path))
    monkeypatch.setattr(trainer_module.torch, "save", real_save)
    assert [n for n in os.listdir(tmp_path / "ckpt") if n.endswith(".pt")] == ["step_00000004.pt"]
    state = torch.load(tmp_path / "ckpt" / "step_00000004.pt", weights_only=True)
    assert state["step"] == 4
    assert pretrain(args_for(prepared, tmp_path, resume=True)) == 0  # and the run finishes from it


def test_nan_loss_stops_without_a_poisoned_checkpoint(prepared, tmp_path, monkeypatch):
    real = Trainer.forward_backward

    def poisoned(self, step):
        loss, tokens = real(self, step)
        return (float("nan"), tokens) if step == 5 else (loss, tokens)

    monkeypatch.setattr(Trainer, "forward_backward", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 6.*step_00000004.pt") as e:
        pretrain(args_for(prepared, tmp_path))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["step_00000004.pt"]
    # the weights and gradients are finite: the advice is about the data, not the learning rate
    assert "forward pass itself" in str(e.value) and "Lowering --lr will not help" in str(e.value)


def test_nan_advice_fits_a_diverged_model(prepared, tmp_path, monkeypatch):
    real = Trainer.forward_backward

    def diverge(self, step):
        if step == 3:
            with torch.no_grad():
                self.raw_model.roberta.layers[0].ffn.fc1.weight.fill_(float("inf"))
        return real(self, step)

    monkeypatch.setattr(Trainer, "forward_backward", diverge)
    with pytest.raises(TrainingError, match=r"step 4.*weights themselves are no longer finite.*lower --lr"):
        pretrain(args_for(prepared, tmp_path))


# ----------------------------------------------------------------------------- batches with nothing to predict


def test_a_batch_with_nothing_masked_has_zero_loss_and_zero_gradient(tiny):
    cfg = tiny()
    from roberta_scratch import RobertaForMaskedLM

    model = RobertaForMaskedLM(cfg)
    ids = torch.randint(4, 50, (2, 6))
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.logits.shape == (0, cfg.vocab_size)
    out.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_micro_batches_are_weighted_by_their_masked_tokens(prepared, tmp_path):
    """The step's gradient is that of the mean over every masked token of the global batch, even
    when the micro-batches hold different numbers of them (one none at all)."""
    config = small_config(prepared / "no_dropout.json", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = Trainer(args_for(prepared, tmp_path, config=config, grad_accum=3, batch_size=2))
    batches = trainer.micro_batches(0)
    batches[1]["labels"][:] = -100  # nothing to predict in the middle micro-batch
    batches[2]["labels"][1:] = -100  # and fewer in the last
    trainer.micro_batches = lambda step: [dict(b) for b in batches]
    loss, _ = trainer.forward_backward(0)
    got = {n: p.grad.clone() for n, p in trainer.raw_model.named_parameters()}

    trainer.optimizer.zero_grad(set_to_none=True)
    total = sum(trainer.raw_model(**b).loss * (b["labels"] != -100).sum() for b in batches)
    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    (total / n).backward()
    assert n > 0 and loss == pytest.approx((total / n).item(), rel=1e-6)
    for name, p in trainer.raw_model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_step_or_a_held_out_set_with_nothing_masked_writes_no_number(prepared, tmp_path, capsys):
    """A loss of 0.0 (and a held-out perplexity of 1.0) would mean nothing: the step is logged as
    skipped, and no held-out metric is written, with a note."""
    trainer = Trainer(args_for(prepared, tmp_path, steps=3, eval_every=3, save_every=3))
    real_batches, real_held_out = trainer.micro_batches, trainer.validation_batches

    def micro_batches(step):
        batches = real_batches(step)
        if step == 1:  # the step logged as step 2
            for b in batches:
                b["labels"] = torch.full_like(b["labels"], -100)
        return batches

    def nothing_masked(*args, **kwargs):
        return [{**b, "labels": torch.full_like(b["labels"], -100)} for b in real_held_out(*args, **kwargs)]

    trainer.micro_batches, trainer.validation_batches = micro_batches, nothing_masked
    assert trainer.fit() == 0
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    logged = {r["step"]: r for r in rows if "lr" in r}
    assert "loss" not in logged[2] and "nothing to predict" in logged[2]["skipped"]
    assert logged[1]["loss"] > 0 and logged[3]["loss"] > 0
    assert not any("val_loss" in r for r in rows)
    assert "the held-out set has no masked tokens, so no validation metric is written" in capsys.readouterr().out


def test_short_documents_with_doc_packing_train_without_nan(tmp_path):
    """Documents of 2-5 words, DOC-SENTENCES and 2 blocks a micro-batch: some micro-batches have
    nothing masked. That made the loss NaN and stopped the run at the same step on every resume."""
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, rng.integers(2, 6))) for _ in range(400)]
    (tmp_path / "short.txt").write_text("\n\n".join(docs) + "\n")
    tok = ByteLevelBPETokenizer.train(iter([" ".join(WORDS)] * 50), vocab_size=300, show_progress=False)
    tok.save_pretrained(str(tmp_path / "tok"))
    prepare(
        [str(tmp_path / "short.txt")],
        str(tmp_path / "tok"),
        str(tmp_path / "data"),
        seq_len=16,
        val_fraction=0.05,
        show_progress=False,
        num_workers=1,
    )
    cfg = RobertaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    cfg.save(str(tmp_path / "cfg.json"))
    args = TrainArgs(
        data=str(tmp_path / "data"),
        out=str(tmp_path / "run"),
        config=str(tmp_path / "cfg.json"),
        packing="doc",
        batch_size=2,
        steps=60,
        warmup=5,
        lr=1e-3,
        log_every=1,
        eval_every=0,
        save_every=60,
        progress=False,
    )
    trainer = Trainer(args)
    empty = sum(int((b["labels"] != -100).sum() == 0) for s in range(60) for b in trainer.micro_batches(s))
    assert empty > 0  # the case this test is about does occur
    assert pretrain(args) == 0
    assert all(np.isfinite(losses(tmp_path / "run")))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_exits_cleanly(prepared, tmp_path, sig):
    """Ctrl-C and what schedulers send: the step finishes, a checkpoint is saved, the exit code is 128 + signal."""
    trainer = Trainer(args_for(prepared, tmp_path, steps=50, save_every=100))
    real = trainer.forward_backward

    def step_then_signal(step):
        if step == 2:
            os.kill(os.getpid(), sig)
        return real(step)

    trainer.forward_backward = step_then_signal
    assert trainer.fit() == 128 + sig
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["step_00000003.pt"]


def test_learning_drops_held_out_loss(prepared, tmp_path):
    assert pretrain(args_for(prepared, tmp_path, steps=150, eval_every=150, save_every=150, lr=5e-3, warmup=5)) == 0
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [json.loads(line) for line in f if "val_loss" in line]
    start, end = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert start > 5.5  # about ln(400) = 6.0 at initialisation
    assert end < start - 1.5, (start, end)  # the words are drawn at random: about ln(30) is the floor
    assert os.path.isfile(tmp_path / "model" / "vocab.json")  # the model ships with its tokenizer
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from roberta_scratch.pretrain import Trainer, TrainArgs
rank = int(sys.argv[1])
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT={port!r})
args = TrainArgs(**{args!r})
trainer = Trainer(args)
loss, _ = trainer.forward_backward(0)
if rank == 0:
    torch.save({{n: p.grad for n, p in trainer.raw_model.named_parameters()}}, {out!r})
dist.barrier()
trainer.close()  # drops the DDP wrapper, then leaves the group: see Trainer.close
import gc
assert not dist.is_initialized()
assert not any(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
"""


def test_ddp_two_ranks_match_one_rank_on_the_same_global_batch(prepared, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    # no dropout: each rank draws its own, while the masks are the same by construction
    config = small_config(prepared / "no_dropout.json", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = dict(data=str(prepared / "data"), config=config, batch_size=4, seed=3, progress=False)
    single = Trainer(TrainArgs(out=str(tmp_path / "one"), grad_accum=2, **base))
    single.forward_backward(0)
    want = {n: p.grad for n, p in single.raw_model.named_parameters()}
    script = DDP_SCRIPT.format(
        root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        port=port,
        args={**base, "out": str(tmp_path / "two"), "grad_accum": 1},
        out=str(tmp_path / "grads.pt"),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], env=env) for r in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    got = torch.load(tmp_path / "grads.pt", weights_only=True)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=name)
