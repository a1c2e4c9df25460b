"""Tables and PNG plots of the prune workflow."""
import os

from slim_plugins.text import table


def human(n):
    n = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _latency_pairs(before, after):
    """``(label, before ms, after ms or None, change or None)`` per measurement (see
    latency.measure); the change is the paired runs' (latency.compare) where there is one."""
    after = {(e["runtime"], e["batch_size"], e["threads"]): e for e in after or ()}
    out = []
    for e in before or ():
        a = after.get((e["runtime"], e["batch_size"], e["threads"]))
        change = None
        if a is not None:
            change = -a["cut"] if "cut" in a else (a["ms"] - e["ms"]) / e["ms"]
        out.append((e["label"], e["ms"], a and a["ms"], change, a))
    return out


def latency_lines(before, after):
    """``latency (Paddle Inference CPU, batch 1, 1 thread): 0.44 -> 0.31 ms (-30.0%)``, per
    measurement; a paired comparison adds its interval: ``(-30.0%, 95% CI ..., 412 pairs)``."""
    lines = []
    for lbl, b, a, change, entry in _latency_pairs(before, after):
        if a is None:
            lines.append(f"{lbl}: {b:.3f} ms")
            continue
        spread = (f", cut 95% CI {entry['cut_low']:.1%} to {entry['cut_high']:.1%} over {entry['pairs']} paired runs"
                  if "cut_low" in entry else "")
        lines.append(f"{lbl}: {b:.3f} -> {a:.3f} ms ({change:+.1%}{spread})")
    return lines


def before_after_table(before, after, metric_name, metric_format=None):
    """``before``/``after``: dicts with params, flops, latency (a list of measurements), metric
    (any may be missing); ``metric_format``: the suite's units (:meth:`slim_plugins.run.Metric.format`)."""
    rows = []
    keys = [("params", "parameters", human), ("flops", "FLOPs", human)]
    latencies = {lbl: (b, a, change) for lbl, b, a, change, _e in _latency_pairs(before.get("latency"),
                                                                                   after.get("latency"))}
    for lbl in latencies:
        keys.append((lbl, lbl + " ms", lambda v: f"{v:.3f}"))
    keys.append(("metric", metric_name, metric_format or (lambda v: f"{v:.4f}")))
    for key, label, fmt in keys:
        b, a, change = latencies[key] if key in latencies else (before.get(key), after.get(key), None)
        if b is None and a is None:
            continue
        if change is None and a is not None and b:
            change = (a - b) / b
        change = f"{change:+.1%}" if change is not None else ""
        rows.append([label, fmt(b) if b is not None else "-", fmt(a) if a is not None else "-", change])
    return table(rows, ["", "before", "after", "change"])


def plotting_unavailable():
    """None if plots can be drawn, else the one line that says they are skipped and how to get them."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return 'plots skipped: matplotlib is not installed (pip install "slim-plugins[plot]")'
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_sensitivities(sensitivities, path, metric_name="metric", budget=None, chosen=None):
    """Loss against pruning ratio, one line per group, every group named in the legend; ``chosen``
    (``{group: ratio}``) marks each group's chosen ratio on its curve with a star."""
    from slim_plugins.plugins.prune.ratios import loss_at_ratio

    plt = _pyplot()
    curves = [(g, l) for g, l in sorted(sensitivities.items()) if l]
    columns = max(1, -(-len(curves) // 30))  # the legend beside the axes: 30 names a column
    fig, ax = plt.subplots(figsize=(8 + (2.6 * columns if len(curves) > 12 else 0), 5), dpi=100)
    for group, losses in curves:
        xs, ys = zip(*sorted(losses.items()))
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=group)
        ratio = (chosen or {}).get(group)
        if ratio:
            ax.plot([ratio], [loss_at_ratio(losses, ratio)], marker="*", markersize=11, linestyle="none",
                    color=line.get_color(), markeredgecolor="black", markeredgewidth=0.6)
    if chosen:
        ax.plot([], [], marker="*", markersize=11, linestyle="none", color="white", markeredgecolor="black",
                label="chosen ratio")
    if budget is not None:
        ax.axhline(budget, color="red", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set_xlabel("pruning ratio (fraction of channels removed)")
    ax.set_ylabel(f"relative {metric_name or 'metric'} loss")
    ax.set_title("Sensitivity of each prunable group")
    ax.grid(alpha=0.3)
    if len(curves) > 12:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), ncol=columns, borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_flops_vs_budget(points, path, metric_name="metric", chosen=None, plan=None):
    """Pruned FLOPs fraction against the metric-loss budget (PaddleX's slim_visualize view).

    :param points: list of ``(budget, pruned_fraction)``.
    :param chosen: the loss budget the run was given or derived (a vertical line), or None.
    :param plan: ``(loss, pruned_fraction, label)`` of the plan the run pruned with: its largest
        per-group loss and the FLOPs it removes (a marked point), for ``pruned_flops`` too.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    xs, ys = zip(*points) if points else ((), ())
    ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, label="largest ratio within the budget per group")
    if chosen is not None:
        ax.axvline(chosen, color="red", linestyle="--", linewidth=1, label=f"budget {chosen:g}")
    if plan is not None:
        loss, fraction, label = plan
        ax.plot([loss], [100 * fraction], marker="*", markersize=14, linestyle="none", color="red",
                markeredgecolor="black", label=f"{label}: {fraction:.1%} of FLOPs")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(f"eval_metric_loss (relative {metric_name or 'metric'} loss budget)")
    ax.set_ylabel("pruned FLOPs (%)")
    ax.set_title("FLOPs removed for a given loss budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
