"""The command line: every subcommand parses, the training commands keep their flags, and
`roberta-scratch convert` is the same command as `python checkpoints_convert.py`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints_convert
from roberta_scratch import RobertaForMaskedLM, RobertaForSequenceClassification, cli

REPO = Path(__file__).resolve().parents[1]

# The flags of the training commands before their parsers were built from the settings dataclasses.
PRETRAIN_FLAGS = {
    "--data",
    "--out",
    "--config",
    "--steps",
    "--batch-size",
    "--grad-accum",
    "--warmup",
    "--seed",
    "--seq-len",
    "--log-every",
    "--eval-every",
    "--eval-blocks",
    "--save-every",
    "--keep-last",
    "--lr",
    "--weight-decay",
    "--clip",
    "--mlm-probability",
    "--attention",
    "--packing",
    "--device",
    "--resume",
    "--compile",
    "--whole-word",
    "--static-masking",
}
FINETUNE_FLAGS = {
    "--task",
    "--model",
    "--train",
    "--eval",
    "--out",
    "--epochs",
    "--batch-size",
    "--grad-accum",
    "--max-length",
    "--stride",
    "--max-answer-length",
    "--seed",
    "--log-every",
    "--eval-every",
    "--save-every",
    "--keep-last",
    "--lr",
    "--warmup-ratio",
    "--weight-decay",
    "--clip",
    "--label-type",
    "--on-bad-row",
    "--attention",
    "--device",
    "--resume",
    "--compile",
}


def subcommand(name):
    parser = cli.build_parser()
    return next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == name)[1]


def flags(name):
    return {s for a in subcommand(name)._actions for s in a.option_strings} - {"-h", "--help"}


def test_every_subcommand_has_help(capsys):
    names = cli.build_parser()._subparsers._group_actions[0].choices
    assert {
        "inspect",
        "prepare",
        "pretrain",
        "fill-mask",
        "demo",
        "tokenizer",
        "finetune",
        "predict",
        "features",
        "attention",
        "convert",
    } <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert "usage: roberta-scratch " + name in capsys.readouterr().out


def test_training_commands_keep_their_flags():
    # every flag they had, plus --overwrite (start over in a folder that holds a run) and --threads;
    # pretrain also has the ablations' --static-copies (BERT's K masks), --eval-seed (one held-out set) and
    # --eval-mlm-probability (one masking rate for that set, whatever the runs train with); both have
    # --trust-code, the opt-in for a config.json that names its kernels as MODULE:FUNCTION; finetune also
    # says which parameters train (--freeze-embeddings, --train-top-layers, --layerwise-lr-decay), and
    # selects the model and stops early (--metric, --[no-]greater-is-better, --early-stopping), trains
    # a LoRA adapter instead of the encoder (--lora-r, --lora-alpha, --lora-dropout, --lora-targets), and
    # has prompt-based few-shot classification's --template, --verbalizer and --shots; both say where
    # metrics go besides metrics.jsonl (--report-to)
    assert flags("pretrain") == PRETRAIN_FLAGS | {
        "--overwrite",
        "--threads",
        "--static-copies",
        "--eval-seed",
        "--eval-mlm-probability",
        "--trust-code",
        "--report-to",
    }
    assert flags("finetune") == FINETUNE_FLAGS | {
        "--overwrite",
        "--threads",
        "--trust-code",
        "--freeze-embeddings",
        "--train-top-layers",
        "--layerwise-lr-decay",
        "--metric",
        "--greater-is-better",
        "--no-greater-is-better",
        "--early-stopping",
        "--lora-r",
        "--lora-alpha",
        "--lora-dropout",
        "--lora-targets",
        "--report-to",
        "--template",
        "--verbalizer",
        "--shots",
    }


def test_every_command_that_reads_a_config_json_has_the_trust_opt_in():
    for name in ("inspect", "pretrain", "finetune", "fill-mask", "predict", "features", "attention", "convert"):
        assert "--trust-code" in flags(name), name


def test_flags_reach_the_settings_and_defaults_stay_the_dataclass_ones():
    from roberta_scratch.finetune.trainer import FinetuneArgs
    from roberta_scratch.pretrain import TrainArgs

    args = cli.build_parser().parse_args(
        [
            "pretrain",
            "--data",
            "D",
            "--out",
            "O",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--whole-word",
            "--packing",
            "doc",
        ]
    )
    t = TrainArgs(**cli._given(args))
    assert (t.batch_size, t.lr, t.whole_word, t.packing, t.steps, t.clip) == (4, 1e-3, True, "doc", 1000, 1.0)
    args = cli.build_parser().parse_args(["finetune", "--task", "qa", "--model", "M", "--train", "T", "--out", "O"])
    f = FinetuneArgs(**cli._given(args))
    assert (f.task, f.lr, f.clip, f.weight_decay, f.keep_last, f.eval_every) == ("qa", 2e-5, 0.0, 0.1, 2, None)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["pretrain", "--out", "O"])  # --data is required


def test_console_script_inspect_prints_parameters_and_flops():
    out = subprocess.run(
        [sys.executable, "-m", "roberta_scratch", "inspect", "--config", "base"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "feed_forward" in out and "124,697,433" in out


def tiny_model_dir(path, cfg, cls=RobertaForMaskedLM):
    torch.manual_seed(0)
    cls(cfg).save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("cls", [RobertaForMaskedLM, RobertaForSequenceClassification])
def test_convert_command_and_script_are_one_command(tiny, tmp_path, capsys, cls):
    src = tiny_model_dir(tmp_path / "src", tiny(vocab_size=300), cls)
    results = []
    for name, run in (("cli", lambda argv: cli.main(["convert", *argv])), ("script", checkpoints_convert.main)):
        out = tmp_path / name
        code = run([src, str(out), "--to", "hf"])
        captured = capsys.readouterr()
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        results.append((code, captured.out.replace(str(out), "DST"), captured.err, files))
    assert results[0] == results[1]
    assert results[0][0] == 0 and set(results[0][3]) >= {"config.json", "model.safetensors"}
    bad = [
        (cli.main(["convert", str(tmp_path / "nope"), str(tmp_path / "x")]), capsys.readouterr().err),
        (checkpoints_convert.main([str(tmp_path / "nope"), str(tmp_path / "x")]), capsys.readouterr().err),
    ]
    assert bad[0] == bad[1] and bad[0][0] == 2 and "neither a model directory" in bad[0][1]


def test_convert_as_processes_gives_the_same_output(tiny, tmp_path):
    src = tiny_model_dir(tmp_path / "src", tiny(vocab_size=300))
    outs = []
    for name, argv in (
        ("script", [sys.executable, "checkpoints_convert.py"]),
        ("module", [sys.executable, "-m", "roberta_scratch", "convert"]),
    ):
        proc = subprocess.run(
            [*argv, src, str(tmp_path / name)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        outs.append(
            (
                proc.returncode,
                proc.stdout.replace(str(tmp_path / name), "DST"),
                (tmp_path / name / "model.safetensors").read_bytes(),
            )
        )
    assert outs[0] == outs[1] and outs[0][0] == 0


def test_convert_carries_the_tokenizer_both_ways(tiny, tmp_path, capsys):
    from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer

    src = tiny_model_dir(tmp_path / "src", tiny(vocab_size=300))
    texts = ["the cat sat on the mat", "a dog ran to the red house"] * 20
    tok = ByteLevelBPETokenizer.train(iter(texts), vocab_size=300, show_progress=False)
    tok.save_pretrained(src)
    assert cli.main(["convert", src, str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert out.count(f"and its ByteLevelBPETokenizer ({tok.vocab_size} tokens)") == 2
    for d in ("hf", "back"):
        assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= set(os.listdir(tmp_path / d))
        assert load_tokenizer(tmp_path / d).fingerprint() == tok.fingerprint()
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text in ["the cat sat on the <mask>.", "a dog ran"]:
        assert theirs(text)["input_ids"] == tok.encode(text)
    assert cli.main(["fill-mask", "--model", str(tmp_path / "back"), "the cat sat on the <mask>."]) == 0


def test_convert_says_when_there_is_no_tokenizer_to_carry(tiny, tmp_path, capsys):
    src = tiny_model_dir(tmp_path / "src", tiny(vocab_size=300))
    assert cli.main(["convert", src, str(tmp_path / "out")]) == 0
    assert "holds no tokenizer files" in capsys.readouterr().out


def test_fairseq_dictionary_and_gpt2_files_rebuild_roberta_base_exactly(reference_dir, tmp_path):
    import json
    import shutil

    from roberta_scratch.checkpoints.converter import find_tokenizer

    for name in ("dict.txt", "gpt2-encoder.json", "merges.txt"):  # as a fairseq model folder has them
        shutil.copy(os.path.join(reference_dir, name), tmp_path / name)
    tok, why_not = find_tokenizer(str(tmp_path))
    assert why_not is None
    with open(os.path.join(reference_dir, "vocab.json"), encoding="utf-8") as f:
        assert tok.vocab == json.load(f)
    assert tok.encode("Hello world!") == [0, 31414, 232, 328, 2]


def test_a_named_subcommand_builds_only_its_own_parser():
    full = list(cli.build_parser()._subparsers._group_actions[0].choices)
    assert full == list(cli._SUBCOMMANDS)  # the table names each parser as the parser does
    for name in full:
        assert list(cli.build_parser(name)._subparsers._group_actions[0].choices) == [name]


def test_prepare_does_not_import_torch():
    # importing torch costs ~1.2 s, a large share of `prepare` on a small corpus; tqdm.auto (with
    # asyncio) 40 ms, imported only where a bar is drawn
    code = (
        "import sys; from roberta_scratch import cli; cli.build_parser('prepare'); "
        "from roberta_scratch.data.packed import prepare; import roberta_scratch; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tqdm', 'asyncio')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"
