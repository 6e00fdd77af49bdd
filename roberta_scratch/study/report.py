"""The study's report: OUT/table.md in the paper's layout, OUT/results.json, OUT/curves.png.

Each table has one row per arm: our held-out MLM perplexity and masked-token accuracy, the
downstream task's accuracy and macro-F1 (and NSP accuracy for the NSP arms), each as mean ±
sample std over seeds, the training tokens and wall time, and the paper's numbers for that
row beside ours. Under it, every arm is compared with the baseline, metric by metric, by the
2-std rule: a gap counts as beyond the noise when |mean difference| > 2 x the pooled std,
sqrt((s_a^2 + s_b^2) / 2) with sample stds (ddof=1); with one seed there is no std and no verdict.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics

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
            1: ["256", "1M", "1e-4", 3.99, 84.7, 92.7],
            8: ["2K", "125K", "7e-4", 3.68, 85.2, 92.9],
            32: ["8K", "31K", "1e-3", 3.77, 84.6, 92.8],
        },
    },
}
TITLES = {
    "masking": "Table 1: static vs dynamic masking",
    "formats": "Table 2: input format and next sentence prediction",
    "batch": "Table 3: batch size at an equal token budget",
}
METRICS = (
    ("ppl", "held-out ppl", False),
    ("mlm_acc", "masked acc %", True),
    ("down_acc", "downstream acc %", True),
    ("down_f1", "macro-F1 %", True),
)


# ----------------------------------------------------------------------------- numbers


def run_values(record: dict) -> dict:
    """The numbers of one finished run (None where a stage did not finish)."""
    pre, ft = record.get("pretrain") or {}, record.get("finetune") or {}
    return {
        "ppl": pre.get("val_ppl"),
        "loss": pre.get("val_loss"),
        "mlm_acc": _pct(pre.get("val_acc")),
        "nsp_acc": _pct(pre.get("val_nsp_acc")),
        "down_acc": _pct(ft.get("accuracy")),
        "down_f1": _pct(ft.get("macro_f1")),
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
    """mean, sample std (None with one value) and n of the values that exist."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def noise_verdict(a: dict | None, b: dict | None) -> dict | None:
    """Arm a against arm b (summaries): the difference of means, the pooled std
    sqrt((s_a^2 + s_b^2) / 2), and whether |difference| > 2 x pooled std ("beyond" True/False;
    None when either side has a single seed, so no std)."""
    if a is None or b is None:
        return None
    delta = a["mean"] - b["mean"]
    if a["std"] is None or b["std"] is None:
        return {"delta": delta, "pooled_std": None, "beyond": None}
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    return {"delta": delta, "pooled_std": pooled, "beyond": abs(delta) > 2 * pooled}


def aggregate(records: list[dict]) -> dict:
    done = [run_values(r) for r in records if r.get("status") == "done"]
    keys = ("ppl", "loss", "mlm_acc", "nsp_acc", "down_acc", "down_f1", "tokens", "wall_s")
    return {k: summarize([v[k] for v in done]) for k in keys} | {"seeds_done": len(done)}


# ----------------------------------------------------------------------------- formatting


def _fmt(s: dict | None, digits: int = 2) -> str:
    if s is None:
        return "–"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


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
    if v["beyond"] is None:
        return f"{v['delta']:+.{digits}f} (1 seed: no std)"
    where = "beyond" if v["beyond"] else "within"
    return f"{v['delta']:+.{digits}f} ({where} noise, 2σ = {2 * v['pooled_std']:.{digits}f})"


def _paper_cells(substudy: str, arm, row_label: str) -> list:
    rows = PAPER[substudy]["rows"]
    if substudy == "masking":
        key = "dynamic" if arm.name == "baseline" else "static" if arm.static_copies > 1 else None
    elif substudy == "formats":
        key = {"baseline": "full"}.get(arm.name, arm.name)
    else:
        key = arm.batch_scale
    values = rows.get(key)
    return [str(v) for v in values] if values else ["–"] * len(PAPER[substudy]["columns"])


def table_markdown(study, substudy: str, rows: list, aggregates: dict, verdicts: dict) -> str:
    """One sub-study's table, its paper reference and its noise comparison, in markdown."""
    p = study.preset
    nsp = substudy == "formats"
    head = ["arm"] + (["bsz", "steps", "lr"] if substudy == "batch" else []) + [m[1] for m in METRICS]
    head += (["NSP acc %"] if nsp else []) + ["seeds", "tokens/run", "wall/run"]
    head += [f"paper: {c}" for c in PAPER[substudy]["columns"]]
    lines = [f"### {TITLES[substudy]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, label in rows:
        agg = aggregates.get(arm.name)
        cells = [label]
        if substudy == "batch":
            args = study.train_args(arm, 0)
            cells += [str(args.batch_size * args.grad_accum), str(args.steps), f"{args.lr:.2g}"]
        digits = {"ppl": 2}
        cells += [_fmt(agg and agg[k], digits.get(k, 1)) for k, _, _ in METRICS]
        cells += [_fmt(agg and agg["nsp_acc"], 1)] if nsp else []
        cells += [str(agg["seeds_done"]) if agg else "0", _tokens(agg and agg["tokens"]), _wall(agg and agg["wall_s"])]
        cells += _paper_cells(substudy, arm, label)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _paper_notes(substudy, p)
    others = [(arm, label) for arm, label in rows if arm.name != "baseline" and arm.name in verdicts]
    if others:
        base_label = next(label for arm, label in rows if arm.name == "baseline")
        lines += [
            "",
            f"Gap to {base_label} (the baseline), mean difference and the 2-std rule:",
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


def _paper_notes(substudy: str, p) -> list[str]:
    if substudy == "masking":
        return [
            f"The paper's *static* row is BERT's recipe: the data duplicated 10 times with 10 masks over 40 "
            f"epochs; ours is `static, {p.static_copies} copies` (`--static-copies {p.static_copies}`), and "
            "`static, 1 mask` (`--static-masking`, one fixed mask per sequence) is an extra, harsher row. "
            "The paper's reference row (BERT_BASE as reported by Yang et al. 2019) is 76.3 / 84.3 / 92.8. The "
            "paper ran Table 1 on BERT's SEGMENT-PAIR+NSP setup; ours shares the FULL-SENTENCES baseline run."
        ]
    if substudy == "formats":
        return [
            "Paper rows: SEGMENT-PAIR and SENTENCE-PAIR with NSP, FULL- and DOC-SENTENCES without; their "
            "BERT_BASE row is 88.5/76.3, 84.3, 92.8, 64.3. Arms with shorter examples (DOC-SENTENCES, the pairs) "
            "get bigger batches so that each step holds about as many tokens, as the paper did."
        ]
    return [
        f"The paper tuned the learning rate for each batch size; we scale ours by the paper's ratios "
        f"{' : '.join(f'{r:g}' for r in p.lr_ratios)} (1e-4 : 7e-4 : 1e-3) from the baseline's {p.lr:g}, "
        "with no tuning of our own, and keep the token budget: the steps shrink as the batch grows."
    ]


# ----------------------------------------------------------------------------- the report


def _report_header(study, study_name: str, n_seeds: int, command: list[str] | None) -> list[str]:
    """table.md's title and what the tables measure: preset, corpus, held-out MLM, downstream task, noise."""
    p = study.preset
    return [
        f"# RoBERTa's pretraining ablations, preset `{p.name}`",
        "",
        f"`{' '.join(command) if command else 'roberta-scratch study ' + study_name}`",
        "",
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
        "- Mean ± sample std over seeds. Gaps to the baseline are *beyond noise* when |difference| > 2 x the "
        "pooled std sqrt((s_a² + s_b²)/2), *within noise* otherwise: read only the former as a result.",
        "- The paper's columns are its own numbers on other tasks (SQuAD, MNLI, SST-2, RACE) at a far larger "
        "scale, for reference: compare directions, not values.",
        "",
    ]


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
    subs = list(dict.fromkeys(s for s, _, _ in plan_rows))
    verdicts = {}
    for a in arms:
        if a != "baseline":
            verdicts[a] = {k: noise_verdict(aggregates[a][k], aggregates["baseline"][k]) for k, _, _ in METRICS}
    parts = _report_header(study, study_name, n_seeds, command)
    for sub in subs:
        rows = [(arm, label) for s, arm, label in plan_rows if s == sub]
        parts.append(table_markdown(study, sub, rows, aggregates, verdicts))
    failed = [r for r in records.values() if r.get("status") == "failed" and r["arm"] in arms]
    if failed:
        parts += ["Failed runs (not retried; delete the run folder to retry):", ""]
        parts += [f"- {r['run']}: {r.get('error', 'failed')}" for r in failed] + [""]
    with atomic_write(os.path.join(study.out, "table.md"), "w") as f:
        f.write("\n".join(parts))
    results = {
        "study": study_name,
        "preset": _jsonable(study.preset),
        "seeds": n_seeds,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(),
        "attention": study.attention,
        "corpus": study.corpus_note,
        "data": {"fingerprint": study.meta.get("fingerprint"), "splits": study.meta.get("splits")},
        "downstream": study.task,
        "arms": {
            a: {
                "arm": _jsonable(arm),
                "settings": _jsonable(study.train_args(arm, 0)),
                "runs": per_arm[a],
                "aggregate": aggregates[a],
                "vs_baseline": verdicts.get(a),
            }
            for a, arm in arms.items()
        },
        "tables": {sub: [{"arm": arm.name, "label": label} for s, arm, label in plan_rows if s == sub] for sub in subs},
        "paper": {sub: PAPER[sub] for sub in subs},
    }
    with atomic_write(os.path.join(study.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    plot_curves(os.path.join(study.out, "curves.png"), subs, plan_rows, per_arm)
    print(f"wrote {os.path.join(study.out, 'table.md')}, results.json and curves.png")


def curve_points(record: dict) -> list[tuple[float, float]]:
    """(training tokens, held-out loss) at each evaluation of a run; tokens estimated from the
    step when the metrics do not record them."""
    pre = record.get("pretrain") or {}
    per_step = record.get("tokens_per_step")
    points = []
    for step, tokens, loss in pre.get("curve", []):
        t = tokens if tokens is not None else (step * per_step if per_step else None)
        if t is not None:
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
