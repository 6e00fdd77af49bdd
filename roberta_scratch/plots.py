"""loss.png: a run's training and held-out loss against steps, from its metrics.jsonl."""

from __future__ import annotations

import json


def plot_metrics(
    metrics_path: str, png_path: str, train_label: str = "training loss", val_label: str = "held-out loss"
) -> bool:
    """loss.png from metrics.jsonl: training loss and held-out loss against steps (needs matplotlib).
    The labels say what each loss is: a run may train and evaluate with different masking."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fig = loss_figure(rows, train_label, val_label)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True


def loss_figure(rows: list[dict], train_label: str, val_label: str):
    """The figure plot_metrics saves, from metrics.jsonl rows."""
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label=train_label)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label=val_label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats a predicted token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
