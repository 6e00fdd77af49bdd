"""`make demo`'s settings learn: the whole demo, shortened to a few dozen steps.

The full demo (6,000 steps) is measured, not tested: see docs/benchmarks.md for its time and accuracy.
"""

import json


def test_demo_settings_lower_the_held_out_loss_within_a_few_steps(tmp_path, capsys, monkeypatch):
    from roberta_scratch import demo

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert demo.run(out=str(tmp_path), steps=60) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        evals = [json.loads(line) for line in f if '"val_loss"' in line]
    assert [e["step"] for e in evals] == [0, 20, 40, 60]
    # chance level is ln(4096) = 8.32: the first evaluation sits there, and 60 steps get well below it
    assert evals[0]["val_loss"] > 8.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    # every probe is printed with its expected answer and five candidates with probabilities
    for text, answer in demo.PROBES:
        assert f"{text}   (the corpus says {answer.strip()!r}: " in out
    assert out.count("%  '") >= 5 * len(demo.PROBES)
    assert "30% masked (held out: 15%" in out
