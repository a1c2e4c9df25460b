"""Sensitivity analysis: slim-plugins against PaddleSlim's FilterPruner.sensitive, same run.

Both sides analyse the same trained DigitsNet (the demo's CNN, trained on scikit-learn digits)
with the same eval data (all 1,797 digits), the same criterion (l1_norm) and ratios 0.1..0.9.
Prints: pruned metric equality at every (group, ratio) both computed, the ratios each picks for
eval_metric_loss in {0.01, 0.02, 0.05, 0.1}, wall times and their ratio, the share of time spent
outside evaluations, and the speedup of 2 local workers over 1.

    python benchmarks/bench_sensitivity.py [--epochs 6] [--workers 2] [--json out.json]
"""
import argparse
import json
import os
import sys
import tempfile
import time
import zlib  # noqa: F401  before paddle (Paddle 2.6 exports an old zlib)

import numpy as np
import paddle
import paddle.nn as nn

from slim_plugins import compat
from slim_plugins.demo import DigitsNet, digits_datasets, hapi_model
from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.ratios import ratios_by_loss
from slim_plugins.plugins.prune.sensitivity import (
    SensitivityFile,
    analyze,
    analyze_parallel,
    architecture_fingerprint,
    weights_fingerprint,
)
from slim_plugins.run import Metric

BUDGETS = (0.01, 0.02, 0.05, 0.1)
RATIOS = [round(0.1 * i, 1) for i in range(1, 10)]
SHAPE = [1, 1, 8, 8]


def trained_weights(epochs):
    paddle.seed(0)
    train, test = digits_datasets()
    net = DigitsNet()
    model = hapi_model(net)
    model.prepare(paddle.optimizer.Adam(learning_rate=0.003, parameters=net.parameters()),
                  nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    model.fit(train, batch_size=64, epochs=epochs, verbose=0)
    return {k: v.numpy() for k, v in net.state_dict().items()}


def fresh_model(weights):
    net = DigitsNet()
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    net.eval()
    return net


class Evaluator:
    """Accuracy on all digits; remembers how long each evaluation took."""

    def __init__(self, net):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.x = paddle.to_tensor((digits.images.astype("float32") / 16.0)[:, None])
        self.y = digits.target
        self.net = net
        self.seconds = []
        self.values = []

    def __call__(self, max_batches=None):
        start = time.perf_counter()
        with paddle.no_grad():
            pred = np.concatenate([self.net(self.x[i:i + 600]).numpy().argmax(1) for i in range(0, len(self.y), 600)])
        value = float((pred == self.y).mean())
        self.seconds.append(time.perf_counter() - start)
        self.values.append(value)
        return value


def run_paddleslim(weights, path):
    from paddleslim.dygraph import L1NormFilterPruner

    net = fresh_model(weights)
    evaluator = Evaluator(net)
    start = time.perf_counter()
    with compat.tracing():
        pruner = L1NormFilterPruner(net, SHAPE)
    with compat.quiet_paddleslim():
        sens = pruner.sensitive(eval_func=evaluator, sen_file=path)
    wall = time.perf_counter() - start
    # evaluation order: baseline, then every collection's ratios 0.1..0.9
    names = {p.name: n for n, p in net.named_parameters()}
    metrics, i = {}, 1
    for coll in pruner.collections:
        if coll.master_name in sens:
            for ratio in sorted(sens[coll.master_name]):
                metrics[(names[coll.master_name], round(float(ratio), 2))] = evaluator.values[i]
                i += 1
    losses = {names[k]: {float(r): l for r, l in v.items()} for k, v in sens.items()}
    return {"wall": wall, "eval": sum(evaluator.seconds), "evals": len(evaluator.seconds),
            "metrics": metrics, "losses": losses,
            "ratios": {b: pruner._get_ratios_by_loss(sens, b) for b in BUDGETS}, "names": names}


def run_ours(weights, path, workers, cap):
    net = fresh_model(weights)
    evaluator = Evaluator(net)
    start = time.perf_counter()
    prunable = PrunableModel(net, SHAPE)
    sfile = SensitivityFile.open(path, model_fingerprint=architecture_fingerprint(net),
                                 weights=weights_fingerprint(net), metric="acc", criterion="l1_norm",
                                 max_batches=None)
    groups = prunable.selected_groups()
    kwargs = dict(groups=groups, ratios=RATIOS, cap=cap, show_progress=False)
    if workers > 1:
        analyze_parallel(prunable, Metric("acc", evaluator), sfile, workers=workers, **kwargs)
    else:
        analyze(prunable, Metric("acc", evaluator), sfile, **kwargs)
    wall = time.perf_counter() - start
    eval_seconds = sfile.data["metric"]["seconds"] + sum(
        e["seconds"] for g in sfile.data["groups"].values() for e in g["ratios"].values())
    metrics = {(g, round(float(r), 2)): e["metric"] for g, d in sfile.data["groups"].items()
               for r, e in d["ratios"].items()}
    sens = sfile.losses()
    return {"wall": wall, "eval": eval_seconds, "evals": 1 + len(metrics), "metrics": metrics,
            "ratios": {b: ratios_by_loss(sens, b) for b in BUDGETS}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-sens-")
    print(f"Paddle {paddle.__version__}, PaddleSlim 2.6.0, {os.cpu_count()} cores; training DigitsNet "
          f"({args.epochs} epochs) ...", flush=True)
    weights = trained_weights(args.epochs)
    cap = max(BUDGETS)
    slim = run_paddleslim(weights, os.path.join(tmp, "paddleslim.pickle"))
    ours = run_ours(weights, os.path.join(tmp, "ours.json"), 1, cap)
    ours_n = run_ours(weights, os.path.join(tmp, "ours-workers.json"), args.workers, cap)

    common = sorted(set(slim["metrics"]) & set(ours["metrics"]))
    mismatched = [k for k in common if slim["metrics"][k] != ours["metrics"][k]]
    print(f"\npruned metric, (group, ratio) pairs computed by both: {len(common)}, identical: "
          f"{len(common) - len(mismatched)}" + (f"  MISMATCH {mismatched[:5]}" if mismatched else ""))
    worst = 0.0
    print("\nratios chosen    " + "  ".join(f"{'loss<=' + str(b):>22}" for b in BUDGETS))
    same_all = True
    for group in sorted(set(slim["losses"]) | {g for r in ours["ratios"].values() for g in r}):
        cells = []
        for b in BUDGETS:
            theirs = {slim["names"][k]: v for k, v in slim["ratios"][b].items()}.get(group, 0.0)
            mine = ours["ratios"][b].get(group, 0.0)
            worst = max(worst, abs(theirs - mine))
            same_all &= abs(theirs - mine) < 1e-3
            cells.append(f"{theirs:.4f} / {mine:.4f}")
        print(f"{group:16s} " + "  ".join(f"{c:>22}" for c in cells))
    print(f"(PaddleSlim / slim-plugins; largest difference {worst:.2e}: PaddleSlim divides the loss by "
          f"baseline + 0.001)")

    def outside(r):
        return (r["wall"] - r["eval"]) / r["wall"]

    rows = [("PaddleSlim sensitive()", slim), ("slim-plugins, 1 process", ours),
            (f"slim-plugins, {args.workers} workers", ours_n)]
    print(f"\n{'':28s}{'wall s':>8}{'evals':>7}{'outside evals':>15}")
    for label, r in rows:
        share = f"{outside(r):14.1%}" if "workers" not in label else f"{'(parallel)':>14}"
        print(f"{label:28s}{r['wall']:8.2f}{r['evals']:7d}{share}")
    print(f"\nspeedup to reach the ratios, 1 process vs PaddleSlim: {slim['wall'] / ours['wall']:.2f}x")
    print(f"speedup, {args.workers} workers vs PaddleSlim: {slim['wall'] / ours_n['wall']:.2f}x")
    print(f"speedup, {args.workers} workers vs 1 process: {ours['wall'] / ours_n['wall']:.2f}x")
    result = {
        "paddle": paddle.__version__, "pairs_compared": len(common), "pairs_mismatched": len(mismatched),
        "same_ratios": same_all, "max_ratio_difference": worst,
        "wall": {label: r["wall"] for label, r in rows},
        "outside_evaluations": {label: outside(r) for label, r in rows[:2]},
        "speedup_vs_paddleslim": slim["wall"] / ours["wall"],
        "speedup_workers": ours["wall"] / ours_n["wall"],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if not mismatched and same_all else 1


if __name__ == "__main__":
    sys.exit(main())
