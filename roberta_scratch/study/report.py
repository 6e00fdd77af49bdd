"""The study's report: OUT/table.md in the paper's layout, OUT/results.json, OUT/curves.png.

Each table has one row per arm: our held-out MLM perplexity and masked-token accuracy, the
downstream task's accuracy and macro-F1 (and NSP accuracy for the NSP arms), each as the median
and range over seeds (the paper's form) and mean ± sample std, the training tokens and wall time,
and the paper's numbers for that row beside ours. Under it, every arm is compared with the
baseline, metric by metric: the difference of means, its 95% interval and Welch's two-sided
t-test, called *different* at p < 0.05. With one seed on a side, or no spread on either, there
is no test (a zero-width band would call any difference real).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field

from ..fileio import atomic_write

# The paper's numbers (Liu et al. 2019, arXiv:1907.11692, Tables 1-3), dev sets. Table 1 is
# BERT_BASE (medians over 5 seeds), "reference" from Yang et al. (2019); Tables 2-3 are BASE models on
# BOOKCORPUS + WIKIPEDIA. SQuAD: F1; MNLI-m, SST-2, RACE: accuracy.
PAPER = {
    "masking": {
        "columns": ["SQuAD 2.0", "MNLI-m", "SST-2"],
        "rows": {"reference": [76.3, 84.3, 92.8], "static": [78.3, 84.3, 92.5], "dynamic": [78.7, 84.0, 92.9]},
    },
    "formats": {
        "columns": ["SQuAD 1.1/2.0", "MNLI-m", "SST-2", "RACE"],
        "rows": {
            "segment-pair": ["90.4/78.7", 84.0, 92.9, 64.2],
            "sentence-pair": ["88.7/76.2", 82.9, 92.1, 63.0],
            "full": ["90.4/79.1", 84.7, 92.5, 64.8],
            "doc": ["90.6/79.7", 84.7, 92.7, 65.6],
            "BERT_BASE": ["88.5/76.3", 84.3, 92.8, 64.3],
        },
    },
    "batch": {
        "columns": ["bsz", "steps", "lr", "ppl", "MNLI-m", "SST-2"],
        "rows": {
            # by rank: a study's smallest, middle and largest batch stand for the paper's 256, 2K, 8K
            0: ["256", "1M", "1e-4", 3.99, 84.7, 92.7],
            1: ["2K", "125K", "7e-4", 3.68, 85.2, 92.9],
            2: ["8K", "31K", "1e-3", 3.77, 84.6, 92.8],
        },
    },
}
TITLES = {
    "masking": "Table 1: static vs dynamic masking",
    "formats": "Table 2: input format and next sentence prediction",
    "batch": "Table 3: batch size at an equal token budget",
}
# (key, column, higher is better): the downstream tasks first, as the paper's Tables 1-2 report
# end tasks only; then the masked-LM scores (Table 3 leads with perplexity, in its own columns)
METRICS = (
    ("down_acc", "downstream acc %", True),
    ("down_f1", "macro-F1 %", True),
    ("pair_task_acc", "same-module acc %", True),
    ("mlm_acc", "masked acc %", True),
    ("ppl", "held-out ppl", False),
)


# ----------------------------------------------------------------------------- numbers


def run_values(record: dict) -> dict:
    """The numbers of one finished run (None where a stage did not finish)."""
    pre, ft = record.get("pretrain") or {}, record.get("finetune") or {}
    pairs = record.get("finetune_pairs") or {}
    return {
        "ppl": pre.get("val_ppl"),
        "loss": pre.get("val_loss"),
        "mlm_acc": _pct(pre.get("val_acc")),
        "nsp_acc": _pct(pre.get("val_nsp_acc")),
        "pair_ppl": pre.get("val_pair_ppl"),  # the pair arms, on held-out pairs of their own format
        "pair_acc": _pct(pre.get("val_pair_acc")),
        "down_acc": _pct(ft.get("accuracy")),
        "down_f1": _pct(ft.get("macro_f1")),
        "pair_task_acc": _pct(pairs.get("accuracy")),
        "tokens": pre.get("train_tokens") or _estimated_tokens(record),
        "wall_s": sum(record.get("wall_s", {}).values()),
    }


def _estimated_tokens(record: dict) -> float | None:
    """Steps x the arm's mean tokens per step, where the metrics do not count tokens."""
    pre = record.get("pretrain") or {}
    return pre["step"] * record["tokens_per_step"] if "step" in pre and record.get("tokens_per_step") else None


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def summarize(values: list) -> dict | None:
    """mean, sample std (None with one value), median, range and n of the values that exist; the
    values themselves, for the test between arms."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else None,
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
        "values": xs,
    }


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified
    Lentz), on the side where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c if abs(c) > tiny else 1.0 + num / tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional, as Welch's)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (q > 0.5) of Student's t, by bisection on t_two_sided_p."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_p(mid, df) / 2 > 1 - q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


ALPHA = 0.05  # a difference is called when Welch's two-sided p < ALPHA


def noise_verdict(a: dict | None, b: dict | None) -> dict | None:
    """Arm a against arm b (summaries): the difference of means, Welch's two-sided t-test (t, its
    degrees of freedom, p) and the 95% interval of the difference; "different" is p < ALPHA (None
    with fewer than 2 seeds on a side, or when neither side varies: no noise was measured, and a
    band of zero width would call any difference real)."""
    if a is None or b is None:
        return None
    delta = a["mean"] - b["mean"]
    verdict = {"delta": delta, "p": None, "ci95": None, "different": None, "why": None}
    if a["n"] < 2 or b["n"] < 2:
        return verdict | {"why": "1 seed: no spread"}
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    if va + vb == 0:
        return verdict | {"why": "no spread across seeds: untestable"}
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    t = delta / se
    p = t_two_sided_p(t, df)
    half = t_quantile(0.975, df) * se
    return verdict | {"t": t, "df": df, "p": p, "ci95": (delta - half, delta + half), "different": p < ALPHA}


LEARN_MARGIN = 0.1  # nats: an arm learned when every seed's held-out loss is this far below the floor


def unigram_floor(data_dir: str, eval_blocks: int, seq_len: int) -> dict:
    """The held-out MLM score of no model at all: every masked token predicted from the training
    split's token frequencies (add-one smoothed), over the tokens of the held-out set the runs are
    scored on (its first eval_blocks FULL-SENTENCES blocks) that masking may pick, each equally
    likely: {"loss", "ppl", "acc"}. An arm not clearly below it learned nothing from context."""
    import numpy as np

    from ..data.packed import TokenStream

    train, val = TokenStream(data_dir, "train"), TokenStream(data_dir, "val")
    meta = train.meta
    special = [meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]]
    counts = np.zeros(meta["vocab_size"], dtype=np.int64)
    for start in range(0, len(train), 1 << 24):  # bounded memory whatever the corpus
        counts += np.bincount(train[start : start + (1 << 24)].astype(np.int64), minlength=len(counts))
    counts[special] = 0
    held_out = val[0 : min(len(val), eval_blocks * (seq_len - 2))].astype(np.int64)
    held_out = held_out[~np.isin(held_out, special)]
    if not len(held_out):
        return {"loss": None, "ppl": None, "acc": None}
    words = len(counts) - len(special)
    log_p = np.log((counts[held_out] + 1) / (counts.sum() + words))
    loss = float(-log_p.mean())
    return {"loss": loss, "ppl": math.exp(loss), "acc": float((held_out == counts.argmax()).mean())}


def learned(agg: dict | None, floor: dict | None) -> bool | None:
    """Whether every seed's held-out loss is LEARN_MARGIN below the floor (None: nothing to judge)."""
    if not agg or not agg.get("loss") or not floor or floor.get("loss") is None:
        return None
    return agg["loss"]["max"] <= floor["loss"] - LEARN_MARGIN


def aggregate(records: list[dict]) -> dict:
    done = [run_values(r) for r in records if r.get("status") == "done"]
    keys = ("ppl", "loss", "mlm_acc", "nsp_acc", "pair_ppl", "pair_acc", "down_acc", "down_f1", "pair_task_acc")
    keys += ("tokens", "wall_s")
    return {k: summarize([v[k] for v in done]) for k in keys} | {"seeds_done": len(done)}


# ----------------------------------------------------------------------------- formatting


def _fmt(s: dict | None, digits: int = 2) -> str:
    """median [min–max] over seeds (the paper's form), then mean ± std."""
    if s is None:
        return "–"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return (
        f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}] "
        f"({s['mean']:.{digits}f} ± {s['std']:.{digits}f})"
    )


def _tokens(s: dict | None) -> str:
    if s is None:
        return "–"
    return f"{s['mean'] / 1e6:.2f}M" if s["mean"] >= 1e5 else f"{s['mean'] / 1e3:.1f}K"


def _wall(s: dict | None) -> str:
    if s is None:
        return "–"
    m, sec = divmod(int(round(s["mean"])), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def _verdict_cell(v: dict | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if "excluded" in v:
        return f"{v['excluded']}: left out"
    if v["different"] is None:
        return f"{v['delta']:+.{digits}f} ({v['why']})"
    lo, hi = v["ci95"]
    call = "different" if v["different"] else "no difference"
    return f"{v['delta']:+.{digits}f}, 95% CI [{lo:+.{digits}f}, {hi:+.{digits}f}], p = {v['p']:.2g}: {call}"


def paper_row(substudy: str, arm, scales: tuple = ()):
    """The key of the paper's row that an arm stands for (None: no such row). Table 3's rows go
    by rank: our smallest, middle and largest batch scale are the paper's 256, 2K and 8K."""
    if substudy == "masking":
        return "dynamic" if arm.name == "baseline" else "static" if arm.static_copies > 1 else None
    if substudy == "formats":
        return {"baseline": "full"}.get(arm.name, arm.name)
    ranks = sorted(set(scales))
    return ranks.index(arm.batch_scale) if arm.batch_scale in ranks else None


def _paper_cells(substudy: str, arm, scales: tuple = ()) -> list:
    values = PAPER[substudy]["rows"].get(paper_row(substudy, arm, scales))
    return [str(v) for v in values] if values else ["–"] * len(PAPER[substudy]["columns"])


@dataclass
class Table:
    """One sub-study's table: its rows, the arm they are compared with, and the comparisons."""

    substudy: str
    rows: list  # (Arm, label)
    reference: str  # the arm name the others are compared with
    verdicts: dict  # arm name -> {metric: noise_verdict}
    winners: dict = field(default_factory=dict)  # Table 3: batch scale -> its best rate's arm
    scales: tuple = ()  # Table 3: the study's batch scales (the paper's rows go by their rank)


def table_markdown(study, table: Table, aggregates: dict, floor=None, learned_arms=None) -> str:
    """One sub-study's table, its paper reference and its noise comparison, in markdown."""
    substudy, verdicts = table.substudy, table.verdicts
    nsp = substudy == "formats"
    head = ["arm"] + (["bsz", "steps", "lr"] if substudy == "batch" else []) + [m[1] for m in METRICS]
    head += ["NSP acc %", "own-format ppl", "own-format masked acc %"] if nsp else []
    head += ["mask seen"] if substudy == "masking" else []
    head += ["seeds", "tokens/run", "wall/run"]
    head += [f"paper: {c}" for c in PAPER[substudy]["columns"]]
    lines = [f"### {TITLES[substudy]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chosen = set(table.winners.values())
    for arm, label in table.rows:
        agg = aggregates.get(arm.name)
        cells = [
            label
            + (" **(best lr)**" if arm.name in chosen else "")
            + (" **(did not learn)**" if (learned_arms or {}).get(arm.name) is False else "")
        ]
        if substudy == "batch":
            args = study.train_args(arm, 0)
            cells += [str(args.batch_size * args.grad_accum), str(args.steps), f"{args.lr:.2g}"]
        digits = {"ppl": 2}
        cells += [_fmt(agg and agg[k], digits.get(k, 1)) for k, _, _ in METRICS]
        if nsp:
            cells += [_fmt(agg and agg[k], d) for k, d in (("nsp_acc", 1), ("pair_ppl", 2), ("pair_acc", 1))]
        cells += [_mask_repeats(study, arm, agg)] if substudy == "masking" else []
        cells += [str(agg["seeds_done"]) if agg else "0", _tokens(agg and agg["tokens"]), _wall(agg and agg["wall_s"])]
        shown = substudy != "batch" or arm.name in chosen or not chosen
        cells += _paper_cells(substudy, arm, table.scales) if shown else ["–"] * len(PAPER[substudy]["columns"])
        lines.append("| " + " | ".join(cells) + " |")
    if floor and floor.get("loss") is not None:
        lines.append(_floor_row(floor, len(head), substudy))
    lines.append("")
    lines += _paper_notes(substudy, study)
    if study.preset.smoke:
        return "\n".join(lines + ["", SMOKE_NOTE]) + "\n"
    others = [(arm, label) for arm, label in table.rows if arm.name in verdicts]
    if others:
        ref_label = next(label for arm, label in table.rows if arm.name == table.reference)
        lines += [
            "",
            f"Gap to {ref_label} (the reference): the difference of means, its 95% interval and Welch's "
            f"two-sided t-test; *different* when p < {ALPHA:g}:",
            "",
            "| arm | " + " | ".join(m[1] for m in METRICS) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for arm, label in others:
            v = verdicts[arm.name]
            lines.append(
                f"| {label} | "
                + " | ".join(_verdict_cell(v.get(k), 2 if k == "ppl" else 1) for k, _, _ in METRICS)
                + " |"
            )
    return "\n".join(lines) + "\n"


SMOKE_NOTE = (
    "**A pipeline smoke test, not an experiment:** this preset is sized to prove that every stage runs, "
    "not to measure anything, so no arm is compared with another and nothing here is a finding."
)


def _mask_repeats(study, arm, agg: dict | None) -> str:
    """How many times each static mask was seen: the passes over the training data (measured, from
    the run's training tokens) over the copies. Dynamic masking draws a new mask every time."""
    if not arm.static_copies:
        return "once (dynamic)"
    train_tokens = ((getattr(study, "meta", None) or {}).get("splits") or {}).get("train", {}).get("tokens")
    if not agg or not agg.get("tokens") or not train_tokens:
        return "–"
    return f"{agg['tokens']['mean'] / train_tokens / arm.static_copies:.1f} times"


def _floor_row(floor: dict, width: int, substudy: str) -> str:
    """The unigram row: held-out perplexity and masked accuracy of predicting from frequencies
    alone, in those two metrics' columns."""
    known = {"ppl": f"{floor['ppl']:.2f}", "mlm_acc": f"{100 * floor['acc']:.1f}"}
    cells = ["unigram (no model)"] + (["–"] * 3 if substudy == "batch" else [])
    cells += [known.get(key, "–") for key, _, _ in METRICS]
    return "| " + " | ".join(cells + ["–"] * (width - len(cells))) + " |"


def _paper_notes(substudy: str, study) -> list[str]:
    p = study.preset
    if substudy == "masking":
        k = study.static_copies()
        return [
            f"The paper's *static* row is BERT's recipe: the data duplicated 10 times with 10 masks over 40 "
            f"epochs, so each mask was seen 4 times. Ours makes as many copies as let each mask be seen "
            f"{p.static_repeats} times in this study's {study.passes():.1f} passes over the data: `static, {k} "
            f"copies` (`--static-copies {k}`); the *mask seen* column is measured from each run's training "
            "tokens. `static, 1 mask` (`--static-masking`, one fixed mask per sequence) is an extra, harsher "
            "row. The paper's reference row (BERT_BASE as reported by Yang et al. 2019) is 76.3 / 84.3 / 92.8. "
            "The paper ran Table 1 on BERT's SEGMENT-PAIR+NSP setup; ours shares the FULL-SENTENCES baseline run."
        ]
    if substudy == "formats":
        return [
            "Paper rows: SEGMENT-PAIR and SENTENCE-PAIR with NSP, FULL- and DOC-SENTENCES without; their "
            "BERT_BASE row is 88.5/76.3, 84.3, 92.8, 64.3. Arms with shorter examples (DOC-SENTENCES, the pairs) "
            "get bigger batches so that each step holds about as many tokens, as the paper did. The held-out "
            "columns score every arm on the same FULL-SENTENCES blocks; a pair arm trains on short pairs, so "
            "its *own-format* columns score it on held-out pairs of its format as well."
        ]
    grid = "; ".join(
        f"bsz {p.batch_size * scale}: {', '.join(f'{p.lr * r:g}' for r in ratios)}"
        for scale, ratios in zip(p.batch_scales, p.lr_grid, strict=True)
    )
    largest = max(p.batch_scales)
    return [
        f"Our batch sizes stand for the paper's 256, 2K and 8K by rank; they grow "
        f"{' and '.join(f'{s}x' for s in p.batch_scales[1:])} (the paper's 8x and 32x) so that the largest "
        f"still takes {max(1, round(p.steps / largest))} steps. "
        "The paper tuned the learning rate for each batch size (1e-4, 7e-4, 1e-3 for 256, 2K, 8K). We sweep "
        f"it ({grid}) at seed 0 and pick each batch size's rate by held-out loss (**best lr**); that rate alone "
        "gets the other seeds, and the test compares the best rates. The token budget is fixed: the steps "
        "shrink as the batch grows. Picking on the held-out set that also scores the row favours the picked "
        "rate slightly, the same for every batch size."
    ]


# ----------------------------------------------------------------------------- findings

# What the paper concludes from each table (Liu et al. 2019, sections 4.1-4.3).
PAPER_CLAIMS = {
    "masking": "dynamic masking is comparable to static or slightly better (Table 1), so RoBERTa uses it",
    "formats": "removing NSP matches or slightly improves end tasks (FULL/DOC-SENTENCES vs SEGMENT-PAIR+NSP), "
    "SENTENCE-PAIR+NSP (single sentences) is worst, and DOC-SENTENCES is slightly better than FULL-SENTENCES",
    "batch": "with the learning rate tuned, bsz 2K beats 256 at the same token budget in perplexity and end "
    "tasks, and 8K is close to 2K",
}
# the paper's rows that are its reference in each table (our reference's counterpart)
PAPER_REFERENCE = {"masking": "dynamic", "formats": "full", "batch": 0}


def paper_gap(substudy: str, arm, scales: tuple = ()) -> tuple[float, str] | None:
    """The paper's own gap of an arm's row to its reference row: the mean over its end-task
    columns (perplexity's sign flipped, lower being better), and those gaps spelled out."""
    rows, columns = PAPER[substudy]["rows"], PAPER[substudy]["columns"]
    key = paper_row(substudy, arm, scales)
    if key not in rows or key == PAPER_REFERENCE[substudy]:
        return None
    gaps, words = [], []
    for column, ours, ref in zip(columns, rows[key], rows[PAPER_REFERENCE[substudy]], strict=True):
        if column in ("bsz", "steps", "lr"):
            continue
        if isinstance(ours, str):  # SQuAD 1.1/2.0: the 2.0 F1
            ours, ref = float(ours.split("/")[1]), float(ref.split("/")[1])
        gap = ours - ref
        gaps.append(-gap if column == "ppl" else gap)
        words.append(f"{column} {gap:+.1f}")
    return sum(gaps) / len(gaps), ", ".join(words)


# The metrics each table's call rests on: those the paper's table reports. Tables 1-2 report end
# tasks only (and a pair format's masked-LM scores are length-confounded, see the formats note);
# Table 3 reports perplexity beside them.
END_TASKS = ("down_acc", "down_f1", "pair_task_acc")
CALLED_ON = {"masking": END_TASKS, "formats": END_TASKS, "batch": END_TASKS + ("ppl",)}


def _our_calls(verdicts: dict, called_on: tuple) -> tuple[list[str], int]:
    """Our gaps, metric by metric, and the sign of the ones in `called_on` called different
    (better = +; 0: none; 2: some better, some worse)."""
    words, signs = [], set()
    for key, name, higher_better in METRICS:
        v = verdicts.get(key)
        if not v or "excluded" in v:
            continue
        if v["different"] is None:
            words.append(f"{name} {v['delta']:+.2f} ({v['why']})")
            continue
        call = "different" if v["different"] else "no difference"
        words.append(f"{name} {v['delta']:+.2f} (p = {v['p']:.2g}, {call})")
        if v["different"] and key in called_on:
            signs.add(1 if (v["delta"] > 0) == higher_better else -1)
    return words, (signs.pop() if len(signs) == 1 else 0 if not signs else 2)


def findings_markdown(tables: list) -> list[str]:
    """Each table's conclusion against the paper's: our gaps with their tests, the paper's gap for
    the same row, and whether ours goes the paper's way, against it, or shows no difference."""
    lines = [
        "## Findings against the paper",
        "",
        "Each call rests on the metrics the paper's table reports: the downstream tasks in Tables 1-2, "
        "perplexity with them in Table 3. Every gap is listed with its test; *better* or *worse* needs p < "
        f"{ALPHA:g}.",
        "",
    ]
    for t in tables:
        labels = dict((arm.name, label) for arm, label in t.rows)
        lines += [f"**{TITLES[t.substudy]}.** The paper: {PAPER_CLAIMS[t.substudy]}.", ""]
        for arm, label in t.rows:
            if arm.name not in t.verdicts:
                continue
            v = t.verdicts[arm.name]
            head = f"- {label} against {labels[t.reference]}: "
            if any("excluded" in x for x in v.values() if x):
                lines.append(head + "left out: an arm did not learn.")
                continue
            words, sign = _our_calls(v, CALLED_ON[t.substudy])
            paper = paper_gap(t.substudy, arm, t.scales)
            if sign == 0:
                call = "no difference beyond noise"
            elif sign == 2:
                call = "mixed: better on some metrics, worse on others"
            elif paper is None or paper[0] == 0:
                call = "better" if sign > 0 else "worse"
            else:
                call = "the paper's direction" if (sign > 0) == (paper[0] > 0) else "against the paper's direction"
            paper_words = f"the paper's gap for this row: {paper[1]}" if paper else "no paper row to compare"
            lines.append(head + "; ".join(words) + f". So: **{call}** ({paper_words}).")
        if t.substudy == "formats":
            lines.append(
                "- The pair formats' calls rest on the downstream tasks, which fine-tune and test every "
                "arm alike. Masked-LM scores are shown on both held-out sets: the common FULL-SENTENCES "
                "blocks (longer than the pairs these arms trained on) and held-out pairs of their own "
                "format (which the baseline is not scored on); neither alone compares formats fairly."
            )
        lines.append("")
    return lines


# ----------------------------------------------------------------------------- the report


def _pair_task_line(study) -> str:
    """The second downstream task, Table 2's question: does the model relate two texts?"""
    pairs = study.task.get("pairs") or {}
    n = {split: sum(c.values()) for split, c in pairs.items()}
    return (
        f"- Pair task (*same-module acc*): whether two docstrings of one package come from the same module "
        f"file, half and half ({n.get('train', 0)} training and {n.get('test', 0)} test pairs, from the same "
        "module split), fine-tuned as the first task: a task about two texts, which NSP is said to help."
    )


def _report_header(study, study_name: str, n_seeds: int, command: list[str] | None) -> list[str]:
    """table.md's title and what the tables measure: preset, corpus, held-out MLM, downstream task, noise."""
    p = study.preset
    smoke = [f"**Preset `{p.name}` is a pipeline smoke test: it draws no conclusions.**", ""] if p.smoke else []
    return [
        f"# RoBERTa's pretraining ablations, preset `{p.name}`",
        "",
        f"`{' '.join(command) if command else 'roberta-scratch study ' + study_name}`",
        "",
        *smoke,
        f"- Preset `{p.name}`: {p.description}. Model {p.model}, vocabulary {p.vocab_size}, blocks of "
        f"{p.seq_len} tokens; the baseline trains {p.steps} steps of {p.batch_size} sequences, lr {p.lr:g}, "
        f"warmup {p.warmup:.0%}, then linear decay; {n_seeds} seed(s); attention `{study.attention}`.",
        f"- Pretraining corpus: {study.corpus_note}.",
        f"- Held-out MLM: {p.eval_blocks} FULL-SENTENCES blocks of the held-out {p.val_fraction:.0%} of the "
        "documents, masked once (the trainer's fixed held-out set); perplexity is exp(mean loss over the "
        "masked tokens).",
        f"- Downstream: which standard-library package a docstring comes from ({len(study.task['classes'])} "
        f"classes: {', '.join(study.task['classes'])}; {study.task['examples']['train']} training and "
        f"{study.task['examples']['test']} test docstrings), split by module file, so no module is in both "
        f"splits; the test modules' docstrings are not in the default pretraining corpus. Fine-tuned "
        f"{p.ft_epochs:g} epochs at lr {p.ft_lr:g} from each arm's model; the last epoch's test accuracy "
        "and macro-F1, no model selection on the test set.",
        _pair_task_line(study),
        "- Each cell: median [min–max] over seeds (the paper's form), then mean ± sample std. A gap to the "
        "baseline is *different* when Welch's two-sided t-test gives p < 0.05; its 95% interval is printed "
        "beside it. With one seed, or no spread on either side, there is no test.",
        f"- The *unigram (no model)* row predicts every masked token from the training split's token "
        f"frequencies. An arm whose held-out loss is not {LEARN_MARGIN:g} nats below it on every seed *did not "
        "learn*: it is marked, and left out of every comparison.",
        "- The paper's columns are its own numbers on other tasks (SQuAD, MNLI, SST-2, RACE) at a far larger "
        "scale, for reference: compare directions, not values.",
        "",
    ]


def _floor(study) -> dict | None:
    """The unigram floor of the study's prepared data (None before there is any)."""
    if not os.path.isfile(os.path.join(study.data_dir, "meta.json")):
        return None
    return unigram_floor(study.data_dir, study.preset.eval_blocks, study.preset.seq_len)


def sweep_winners(rows: list, records: dict) -> dict[int, str]:
    """Table 3's chosen rate: for each batch scale, the arm of its sweep with the lowest held-out
    loss at seed 0 (a run that did not finish is not a candidate). {batch_scale: arm name}."""
    best: dict[int, tuple[float, str]] = {}
    for sub, arm, _ in rows:
        if sub != "batch":
            continue
        record = records.get(f"{arm.name}-s0") or {}
        loss = (record.get("pretrain") or {}).get("val_loss") if record.get("status") == "done" else None
        if loss is None or not math.isfinite(loss):
            continue
        if arm.batch_scale not in best or loss < best[arm.batch_scale][0]:
            best[arm.batch_scale] = (loss, arm.name)
    return {scale: name for scale, (_, name) in best.items()}


def _warn_unlearned(learned_arms: dict, aggregates: dict, floor: dict | None) -> None:
    """Say loudly, on stderr, which arms did not learn: they are left out of every conclusion."""
    for a, ok in learned_arms.items():
        if ok is False:
            worst = aggregates[a]["loss"]["max"]
            print(
                f"WARNING: arm {a} did not learn: its held-out loss ({worst:.3f} at worst over seeds) is not "
                f"{LEARN_MARGIN:g} nats below the unigram floor ({floor['loss']:.3f}); it is left out of "
                "every conclusion",
                file=sys.stderr,
                flush=True,
            )


def _verdicts(compared: list[str], reference: str, aggregates: dict, learned_arms: dict) -> dict:
    """Each compared arm against the table's reference, metric by metric; an arm that did not
    learn (or a reference that did not) is left out of every conclusion."""
    verdicts = {}
    for a in compared:
        if learned_arms.get(a) is False or learned_arms.get(reference) is False:
            verdicts[a] = {k: {"excluded": "did not learn"} for k, _, _ in METRICS}
        else:
            verdicts[a] = {k: noise_verdict(aggregates[a][k], aggregates[reference][k]) for k, _, _ in METRICS}
    return verdicts


def reference_and_compared(substudy: str, rows: list, winners: dict) -> tuple[str, list[str]]:
    """The arm a table's others are compared with, and those others. Tables 1-2: the baseline
    and every other arm. Table 3: the best rate of the baseline's batch size, and the best rate
    of each other batch size (the sweep's other points have one seed: shown, not tested)."""
    if substudy != "batch":
        return "baseline", [arm.name for arm, _ in rows if arm.name != "baseline"]
    scales = sorted({arm.batch_scale for arm, _ in rows})
    reference = winners.get(scales[0], "baseline")
    return reference, [winners[s] for s in scales[1:] if s in winners]


def _tables(study, plan_rows: list, records: dict, aggregates: dict, learned_arms: dict) -> list[Table]:
    """One Table per sub-study in the plan: its rows, its reference and its comparisons (none for a
    smoke-test preset)."""
    winners = sweep_winners(plan_rows, records)
    tables = []
    for sub in dict.fromkeys(s for s, _, _ in plan_rows):
        rows = [(arm, label) for s, arm, label in plan_rows if s == sub]
        reference, compared = reference_and_compared(sub, rows, winners)
        verdicts = {} if study.preset.smoke else _verdicts(compared, reference, aggregates, learned_arms)
        batch = sub == "batch"
        scales = study.preset.batch_scales if batch else ()
        tables.append(Table(sub, rows, reference, verdicts, winners if batch else {}, scales))
    return tables


def write_report(
    study, study_name: str, plan_rows: list, n_seeds: int, records: dict, command: list[str] | None
) -> None:
    """OUT/table.md, OUT/results.json and OUT/curves.png from the runs' study.json records
    (those of this invocation, plus the done runs already on disk)."""
    records = dict(records)
    for name in sorted(os.listdir(study.runs_dir)) if os.path.isdir(study.runs_dir) else []:
        path = os.path.join(study.runs_dir, name, "study.json")
        if name not in records and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                records[name] = json.load(f)
    arms = {arm.name: arm for _, arm, _ in plan_rows}
    per_arm = {a: [records[f"{a}-s{s}"] for s in range(n_seeds) if f"{a}-s{s}" in records] for a in arms}
    aggregates = {a: aggregate(rs) for a, rs in per_arm.items()}
    floor = _floor(study)
    learned_arms = {a: learned(aggregates[a], floor) for a in arms}
    _warn_unlearned(learned_arms, aggregates, floor)
    tables = _tables(study, plan_rows, records, aggregates, learned_arms)
    parts = _report_header(study, study_name, n_seeds, command)
    parts += [table_markdown(study, t, aggregates, floor, learned_arms) for t in tables]
    if not study.preset.smoke:
        parts += findings_markdown(tables)
    failed = [r for r in records.values() if r.get("status") == "failed" and r["arm"] in arms]
    if failed:
        parts += ["Failed runs (not retried; delete the run folder to retry):", ""]
        parts += [f"- {r['run']}: {r.get('error', 'failed')}" for r in failed] + [""]
    with atomic_write(os.path.join(study.out, "table.md"), "w") as f:
        f.write("\n".join(parts))
    subs = [t.substudy for t in tables]
    comparisons = {a: (t.reference, v) for t in tables for a, v in t.verdicts.items()}
    results = {
        "study": study_name,
        "preset": _jsonable(study.preset),
        "seeds": n_seeds,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(),
        "attention": study.attention,
        "threads": {"count": study.threads, "why": study.threads_why, "every run": True},
        "corpus": study.corpus_note,
        "data": {"fingerprint": study.meta.get("fingerprint"), "splits": study.meta.get("splits")},
        "downstream": study.task,
        "unigram_floor": floor,
        "learn_margin_nats": LEARN_MARGIN,
        "arms": {
            a: {
                "arm": _jsonable(arm),
                "settings": _jsonable(study.train_args(arm, 0)),
                "runs": per_arm[a],
                "aggregate": aggregates[a],
                "learned": learned_arms.get(a),
                "compared_with": comparisons[a][0] if a in comparisons else None,
                "comparison": comparisons[a][1] if a in comparisons else None,
            }
            for a, arm in arms.items()
        },
        "tables": {
            t.substudy: {
                "rows": [{"arm": arm.name, "label": label} for arm, label in t.rows],
                "reference": t.reference,
                "lr_sweep_best": {str(k): v for k, v in t.winners.items()},
            }
            for t in tables
        },
        "smoke_test": study.preset.smoke,
        "paper": {sub: PAPER[sub] for sub in subs},
    }
    with atomic_write(os.path.join(study.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    plot_curves(os.path.join(study.out, "curves.png"), subs, plan_rows, per_arm)
    print(f"wrote {os.path.join(study.out, 'table.md')}, results.json and curves.png")


def curve_points(record: dict) -> list[tuple[float, float]]:
    """(training tokens, held-out loss) at each evaluation of a run after the first step; tokens
    estimated from the step when the metrics do not record them."""
    pre = record.get("pretrain") or {}
    per_step = record.get("tokens_per_step")
    points = []
    for step, tokens, loss in pre.get("curve", []):
        t = tokens if tokens is not None else (step * per_step if per_step else None)
        if t is not None and step > 0:  # not the untrained model: ln(V) would flatten every difference
            points.append((float(t), float(loss)))
    return points


def plot_curves(path: str, subs: list, plan_rows: list, per_arm: dict) -> bool:
    """curves.png: held-out MLM loss against training tokens, a panel per sub-study, a line per
    arm (the mean over seeds at each evaluation, a band from the lowest to the highest seed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: pip install matplotlib to draw curves.png")
        return False
    fig, axes = plt.subplots(1, len(subs), figsize=(6 * len(subs), 4.2), squeeze=False)
    for ax, sub in zip(axes[0], subs, strict=True):
        for _, arm, label in [r for r in plan_rows if r[0] == sub]:
            curves = [curve_points(r) for r in per_arm.get(arm.name, []) if r.get("status") == "done"]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
            ys = [[c[i][1] for c in curves] for i in range(n)]
            label = f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
            (line,) = ax.plot(xs, [statistics.fmean(y) for y in ys], "o-", ms=3, label=label)
            if len(curves) > 1:
                ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2)
        ax.set_title(TITLES[sub].split(": ", 1)[1])
        ax.set_xlabel("training tokens")
        ax.set_ylabel("held-out MLM loss (nats)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def _jsonable(obj) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def _machine() -> dict:
    import torch

    from ..machine import describe

    info = {"platform": platform.platform(), **describe()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _versions() -> dict:
    """The kernel lab's version record (python, torch, CUDA, triton, numpy), this project's version
    and its git commit."""
    import importlib.metadata
    import subprocess

    from roberta_kernels.bench import versions

    try:
        ours = importlib.metadata.version("roberta-scratch")
    except importlib.metadata.PackageNotFoundError:
        ours = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {**versions(), "roberta_scratch": ours, "git_commit": commit}
