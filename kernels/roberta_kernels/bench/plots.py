"""The two figures of a run: attention TFLOP/s against T and the padding speed-up; LayerNorm GB/s."""

from __future__ import annotations


def plot_attention(rows: list, path: str, title: str, pad_seq_len: int) -> None:
    """TFLOP/s against T without padding (left); speed-up against the padding fraction (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    left, right = fig.subplots(1, 2)
    colors = {}
    for impl in dict.fromkeys(r["impl"] for r in rows):
        color = colors.setdefault(impl, f"C{len(colors) % 10}")
        sweep = sorted((r for r in rows if r["impl"] == impl and r["pad"] == 0), key=lambda r: r["T"])
        for phase, style in (("fwd", "o-"), ("fwd_bwd", "s--")):
            pts = [(r["T"], r[f"{phase}_tflops"]) for r in sweep if f"{phase}_tflops" in r]
            if pts:
                left.plot(*zip(*pts, strict=True), style, color=color, label=f"{impl} {phase.replace('_', '+')}")
        pads = sorted((r for r in rows if r["impl"] == impl and r["T"] == pad_seq_len), key=lambda r: r["pad"])
        for phase, style in (("fwd", "o-"), ("fwd_bwd", "s--")):
            pts = [
                (r["pad"], 1.0 if r["pad"] == 0 else r[f"{phase}_speedup_vs_no_pad"])
                for r in pads
                if f"{phase}_ms" in r and (r["pad"] == 0 or f"{phase}_speedup_vs_no_pad" in r)
            ]
            if len(pts) > 1:
                right.plot(*zip(*pts, strict=True), style, color=color, label=f"{impl} {phase.replace('_', '+')}")
    fractions = sorted({r["pad"] for r in rows if r["T"] == pad_seq_len})
    if len(fractions) > 1:
        ideal = [(f, 1.0 / max(1.0 - f, 1e-3) ** 2) for f in fractions]
        right.plot(*zip(*ideal, strict=True), ":", color="gray", label="ideal: work on real tokens, (1 - pad)^-2")
        measured = [y for line in right.get_lines()[:-1] for y in line.get_ydata()]
        right.set_ylim(0, max(4.5, 1.25 * max(measured, default=1.0)))  # the ideal line runs off at high padding
    left.set(
        xscale="log",
        xlabel="sequence length T (no padding)",
        ylabel="TFLOP/s on real tokens",
        title="throughput against T",
    )
    xs = sorted({r["T"] for r in rows if r["pad"] == 0})
    if xs:
        left.minorticks_off()
        left.set_xticks(xs, [str(x) for x in xs])
    right.set(
        xlabel=f"padding fraction at T = {pad_seq_len}",
        ylabel="speed-up over no padding (time ratio)",
        title="skipping padding",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_layer_norm(rows: list, path: str, title: str, bandwidth: float | None) -> None:
    """GB/s against the hidden size, forward (left) and forward+backward (right); dashed with dropout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {}
    for impl in dict.fromkeys(r["impl"] for r in rows):
        color = colors.setdefault(impl, f"C{len(colors) % 10}")
        for p in sorted({r["dropout"] for r in rows}):
            sel = sorted((r for r in rows if r["impl"] == impl and r["dropout"] == p), key=lambda r: r["N"])
            for ax, phase in zip(axes, ("fwd", "fwd_bwd"), strict=True):
                pts = [(r["N"], r[f"{phase}_gbs"]) for r in sel if f"{phase}_gbs" in r]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True), "o-" if p == 0 else "s--", color=color, label=f"{impl}, dropout {p:g}"
                    )
    ns = sorted({r["N"] for r in rows})
    for ax, phase in zip(axes, ("forward", "forward+backward"), strict=True):
        if bandwidth:
            ax.axhline(bandwidth, ls=":", color="gray", label=f"measured copy {bandwidth:,.0f} GB/s")
        ax.set(xscale="log", xlabel="hidden size N", ylabel="GB/s over the fused op's bytes", title=phase)
        if ns:
            ax.minorticks_off()
            ax.set_xticks(ns, [str(n) for n in ns])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
