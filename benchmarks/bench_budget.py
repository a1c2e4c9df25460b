"""Budgets that hold for the whole model, found with fewer evaluations (issue 13), same run.

A MobileNetV2-style net (inverted residuals with depthwise convs, >= 10 prunable groups) is
trained briefly on scikit-learn's digits upsampled to 32 px. Printed, all measured here:

(a) analysis wall time and evaluations to the ratios for eval_metric_loss 0.01/0.02/0.05/0.1:
    PaddleSlim's FilterPruner.sensitive() (every ratio of every group, once for all budgets)
    against slim-plugins per budget, as a user runs it (scan up to the cap; crossing search),
    and whether the ratios agree within PaddleSlim's interpolation; and ours without the prefix
    cache (every evaluation computing the whole model), for what that cache saves;
(b) the whole-model loss before fine-tuning of PaddleSlim's per-group plan and of ours (the
    back-off), per budget, and whether it is within the budget;
(c) accuracy after the same short fine-tuning at equal FLOPs (-30%, -50%): our pruned_flops
    plan, uniform ratios, PaddleSlim's get_ratios_by_loss plan; 3 seeds, mean and spread.

    python benchmarks/bench_budget.py [--epochs 8] [--finetune-epochs 2] [--finetune-images 600] [--seeds 3]
                                      [--json out.json] [--plot out.png]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import paddle
import paddle.nn as nn

from slim_plugins import compat
from slim_plugins.plugins.prune import calibrate, measure
from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.prefix import DEFAULT_LIMIT_BYTES
from slim_plugins.plugins.prune.ratios import back_off, plans_for_flops, ratios_by_loss, scale_to_flops
from slim_plugins.plugins.prune.sensitivity import (
    SensitivityFile,
    analyze,
    architecture_fingerprint,
    cap_for_flops,
    relative_loss,
    weights_fingerprint,
)
from slim_plugins.run import Metric

BUDGETS = (0.01, 0.02, 0.05, 0.1)
TARGETS = (0.3, 0.5)
RATIOS = [round(0.1 * i, 1) for i in range(1, 10)]
SHAPE = [1, 1, 32, 32]
EVAL_IMAGES = 300


# ------------------------------------------------------------------------------ model and data
class InvertedResidual(nn.Layer):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2D(cin, hidden, 1, bias_attr=False), nn.BatchNorm2D(hidden), nn.ReLU6()]
        layers += [nn.Conv2D(hidden, hidden, 3, stride, padding=1, groups=hidden, bias_attr=False),
                   nn.BatchNorm2D(hidden), nn.ReLU6(),
                   nn.Conv2D(hidden, cout, 1, bias_attr=False), nn.BatchNorm2D(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TinyMobileNetV2(nn.Layer):
    """MobileNetV2's layout at digit scale: stem, (t, c, n, s) stages, a 1x1 head conv."""

    STAGES = ((1, 8, 1, 1), (3, 16, 2, 2), (3, 24, 2, 2), (3, 32, 2, 1))

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(1, 16, 3, stride=2, padding=1, bias_attr=False), nn.BatchNorm2D(16),
                                  nn.ReLU6())
        blocks, cin = [], 16
        for t, c, n, s in self.STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2D(cin, 64, 1, bias_attr=False), nn.BatchNorm2D(64), nn.ReLU6())
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def digits32():
    """scikit-learn's digits, bilinearly upsampled to 32 x 32; 1,200 to train, 597 to test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = paddle.to_tensor((digits.images.astype("float32") / 16.0)[:, None])
    x = nn.functional.interpolate(x, size=[32, 32], mode="bilinear", align_corners=False).numpy()
    y = digits.target.astype("int64")
    order = np.random.RandomState(0).permutation(len(y))
    train, test = order[:1200], order[1200:]
    return (x[train], y[train]), (x[test], y[test])


def train(net, data, epochs, seed, lr):
    x, y = data
    paddle.seed(seed)
    rng = np.random.RandomState(seed)
    steps = epochs * ((len(y) + 63) // 64)
    opt = paddle.optimizer.Adam(learning_rate=paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=max(1, steps)),
                                parameters=net.parameters())
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y), 64):
            batch = order[i:i + 64]
            loss = nn.functional.cross_entropy(net(paddle.to_tensor(x[batch])), paddle.to_tensor(y[batch]))
            loss.backward()
            opt.step()
            opt.clear_grad()
            opt._learning_rate.step()
    net.eval()


class Evaluator:
    """Accuracy on the first ``limit`` test digits (the analysis, like sen_batches) or all of
    them (after fine-tuning); counts its calls."""

    def __init__(self, net, data, limit=EVAL_IMAGES):
        self.net = net
        self.x, self.y = paddle.to_tensor(data[0][:limit]), data[1][:limit]
        self.calls = 0

    def __call__(self, max_batches=None):
        self.calls += 1
        with paddle.no_grad():
            pred = np.concatenate([self.net(self.x[i:i + 300]).numpy().argmax(1) for i in range(0, len(self.y), 300)])
        return float((pred == self.y).mean())


def fresh(weights):
    net = TinyMobileNetV2()
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    net.eval()
    return net


def open_file(path, net):
    return SensitivityFile.open(path, model_fingerprint=architecture_fingerprint(net), weights=weights_fingerprint(net),
                                metric="acc", criterion="l1_norm", max_batches=None)


class Bound:
    """The functions the workflow gives the ratio choice, on one model."""

    def __init__(self, net, prunable, evaluator, baseline):
        self.net, self.prunable, self.evaluator, self.baseline = net, prunable, evaluator, baseline
        self.inputs = [paddle.zeros(SHAPE)]
        self.base_flops = measure.flops(net, self.inputs)

    def flops_of(self, ratios):
        applied = self.prunable.apply(ratios)
        try:
            return (self.base_flops - measure.flops(self.net, self.inputs)) / self.base_flops
        finally:
            applied.restore()

    def loss_of(self, ratios, recalibrate=False):
        applied = self.prunable.apply(ratios)
        try:
            value = calibrate.recalibrated(self.net, self.evaluator) if recalibrate else self.evaluator()
            return relative_loss(self.baseline, value)
        finally:
            applied.restore()


# ------------------------------------------------------------------------------ (a) analysis
def run_paddleslim(weights, data, path):
    from paddleslim.dygraph import L1NormFilterPruner

    net = fresh(weights)
    evaluator = Evaluator(net, data)
    start = time.perf_counter()
    with compat.tracing():
        pruner = L1NormFilterPruner(net, SHAPE)
    with compat.quiet_paddleslim():
        sens = pruner.sensitive(eval_func=evaluator, sen_file=path)
    wall = time.perf_counter() - start
    names = {p.name: n for n, p in net.named_parameters()}
    ratios = {b: {names[k]: float(v) for k, v in pruner._get_ratios_by_loss(sens, b).items()} for b in BUDGETS}
    return {"wall": wall, "evals": evaluator.calls, "pruner": pruner, "sens": sens, "names": names, "ratios": ratios}


def run_ours(weights, data, path, budget, search, cache_bytes=DEFAULT_LIMIT_BYTES):
    """One user's run for ``eval_metric_loss=budget``: trace, analyse with the cap, choose."""
    net = fresh(weights)
    evaluator = Evaluator(net, data)
    start = time.perf_counter()
    prunable = PrunableModel(net, SHAPE)
    sfile = open_file(path, net)
    analyze(prunable, Metric("acc", evaluator), sfile, groups=prunable.selected_groups(), ratios=RATIOS, cap=budget,
            show_progress=False, search=search, cache_bytes=cache_bytes)
    sens = {g: l for g, l in sfile.losses().items() if l}
    ratios = ratios_by_loss(sens, budget)
    wall = time.perf_counter() - start
    return {"wall": wall, "evals": evaluator.calls, "ratios": ratios, "sens": sens, "net": net,
            "prunable": prunable, "evaluator": evaluator, "baseline": sfile.baseline}


# ------------------------------------------------------------------------------ (c) plans at equal FLOPs
def slim_plan_for_flops(slim, bound, target):
    """Bisection on the budget of PaddleSlim's own get_ratios_by_loss until ``target`` is met."""
    low, high, best = 0.0, 1.0, None
    for _ in range(30):
        budget = (low + high) / 2
        chosen = slim["pruner"]._get_ratios_by_loss(slim["sens"], budget)
        ratios = {slim["names"][k]: float(v) for k, v in chosen.items()}
        fraction = bound.flops_of(ratios)
        if fraction >= target:
            high, best = budget, (ratios, fraction)
        else:
            low = budget
    return best


def our_plan_for_flops(weights, data, path, target):
    """What ``--prune.pruned_flops target`` does: a cap from the target, crossing search,
    then the candidate plan with the lowest whole-model loss measured after re-estimating the
    batch norms' statistics."""
    net = fresh(weights)
    evaluator = Evaluator(net, data)
    start = time.perf_counter()
    prunable = PrunableModel(net, SHAPE)
    sfile = open_file(path, net)
    groups = prunable.selected_groups()
    metric = Metric("acc", evaluator)

    def run_analysis(**kwargs):
        args = dict(groups=groups, ratios=RATIOS, show_progress=False, search=True)
        args.update(kwargs)
        return analyze(prunable, metric, sfile, **args)

    run_analysis(ratios=[], cap=None)  # the baseline
    bound = Bound(net, prunable, evaluator, sfile.baseline)
    cap = cap_for_flops(sfile, groups, RATIOS, target, bound.flops_of, run_analysis)[0]
    run_analysis(cap=cap)
    analysis_evals = evaluator.calls
    sens = {g: l for g, l in sfile.losses().items() if l}
    ratios, fraction, loss, candidates = plans_for_flops(sens, target, bound.flops_of,
                                                         lambda r: bound.loss_of(r, recalibrate=True),
                                                         limits={g: RATIOS[-1] for g in sens})
    return {"ratios": ratios, "fraction": fraction, "loss": loss, "candidates": candidates, "cap": cap,
            "analysis_evals": analysis_evals, "evals": evaluator.calls, "wall": time.perf_counter() - start}


def finetuned_accuracy(weights, ratios, data, seed, epochs, images):
    train_data, test_data = data
    net = fresh(weights)
    PrunableModel(net, SHAPE).prune(ratios, check_inputs=[paddle.zeros(SHAPE)])
    train(net, (train_data[0][:images], train_data[1][:images]), epochs, seed, lr=0.002)
    return Evaluator(net, test_data, limit=None)()


def plot_finetuned(rows, path, title):
    """Accuracy after fine-tuning per target and plan: each seed a dot, the mean a bar."""
    from slim_plugins.plugins.prune.report import _pyplot

    plt = _pyplot()
    plans = list(dict.fromkeys(r["plan"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for i, plan in enumerate(plans):
            row = next(r for r in rows if r["target"] == target and r["plan"] == plan)
            ax.bar(i, row["mean"], color=f"C{i}", alpha=0.6)
            ax.errorbar(i, row["mean"], yerr=row["std"], color="black", capsize=4)
            ax.plot([i] * len(row["accs"]), row["accs"], "k.", markersize=5)
            ax.text(i, row["mean"] + row["std"] + 0.01, f"{row['mean']:.3f}", ha="center", fontsize=8)
        ax.set_xticks(range(len(plans)))
        ax.set_xticklabels(plans)
        ax.set_title(f"FLOPs -{target:.0%}")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("test accuracy after fine-tuning")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the base model")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-images", type=int, default=600, help="training digits the fine-tuning sees")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--plot", help="a PNG of (c): each plan's accuracy after fine-tuning, per seed and mean")
    args = parser.parse_args()
    began = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench-budget-")
    train_data, test_data = digits32()
    paddle.seed(0)
    net = TinyMobileNetV2()
    train(net, train_data, args.epochs, 0, lr=0.005)
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    groups = PrunableModel(fresh(weights), SHAPE).selected_groups()
    print(f"Paddle {paddle.__version__}, {os.cpu_count()} cores; TinyMobileNetV2 ({len(groups)} prunable groups) "
          f"trained {args.epochs} epochs: test accuracy {Evaluator(net, test_data, limit=None)():.4f} "
          f"(the analysis evaluates the first {EVAL_IMAGES} test digits)", flush=True)
    result = {"paddle": paddle.__version__, "groups": len(groups)}

    # (a) ---------------------------------------------------------------------------------
    slim = run_paddleslim(weights, test_data, os.path.join(tmp, "paddleslim.pickle"))
    print(f"\n(a) analysis to the ratios; PaddleSlim sensitive(): {slim['wall']:.1f} s, {slim['evals']} evaluations "
          f"(all budgets at once)")
    print(f"{'budget':>7} {'ours s':>7} {'evals':>6} {'capped scan evals':>18} {'x PaddleSlim (s)':>17} "
          f"{'x (evals)':>10} {'no cache s':>11}  ratios vs PaddleSlim")
    ours = {}
    rows = []
    for budget in BUDGETS:
        scan_evals = 1 + sum(next((i + 1 for i, r in enumerate(sorted(c)) if c[r] > budget), len(c))
                             for c in slim["sens"].values())  # what sen_search false would take
        found = run_ours(weights, test_data, os.path.join(tmp, f"search-{budget}.json"), budget, search=True)
        ours[budget] = found
        uncached = run_ours(weights, test_data, os.path.join(tmp, f"uncached-{budget}.json"), budget, search=True,
                            cache_bytes=0)
        assert uncached["ratios"] == found["ratios"], "the prefix cache changed the chosen ratios"
        theirs = slim["ratios"][budget]
        names = set(theirs) | set(found["ratios"])
        diffs = {g: abs(theirs.get(g, 0.0) - found["ratios"].get(g, 0.0)) for g in names}
        same = sum(d < 1e-3 for d in diffs.values())
        within = sum(d <= 0.1 + 1e-9 for d in diffs.values())
        print(f"{budget:7g} {found['wall']:7.1f} {found['evals']:6d} {scan_evals:18d} "
              f"{slim['wall'] / found['wall']:17.2f} {slim['evals'] / found['evals']:10.2f} {uncached['wall']:11.1f}  "
              f"{same}/{len(names)} equal, {within}/{len(names)} within one analysed step (0.1), "
              f"max diff {max(diffs.values(), default=0):.3f}", flush=True)
        rows.append({"budget": budget, "search_wall": found["wall"], "search_evals": found["evals"],
                     "capped_scan_evals": scan_evals,
                     "speedup_wall": slim["wall"] / found["wall"], "speedup_evals": slim["evals"] / found["evals"],
                     "uncached_wall": uncached["wall"],
                     "equal": same, "within_step": within, "groups": len(names)})
    result["analysis"] = {"paddleslim_wall": slim["wall"], "paddleslim_evals": slim["evals"], "budgets": rows}

    # (b) ---------------------------------------------------------------------------------
    print("\n(b) whole-model loss before fine-tuning (relative accuracy loss on the test digits)")
    print(f"{'budget':>7} {'PaddleSlim per-group plan':>26} {'ours (back-off)':>16} {'within':>7} {'scale':>6} "
          f"{'evals':>6} {'FLOPs cut ours / per-group':>27}")
    rows = []
    for budget in BUDGETS:
        found = ours[budget]
        bound = Bound(found["net"], found["prunable"], found["evaluator"], found["baseline"])
        per_group = slim["ratios"][budget]
        per_group_loss = bound.loss_of(per_group) if per_group else 0.0
        ratios, loss, scale, evaluations = back_off(found["sens"], budget, bound.loss_of)
        cut, cut_pg = bound.flops_of(ratios) if ratios else 0.0, bound.flops_of(per_group) if per_group else 0.0
        print(f"{budget:7g} {per_group_loss:+26.4f} {loss:+16.4f} {str(loss <= budget):>7} {scale:6.3f} "
              f"{len(evaluations):6d} {cut:13.1%} / {cut_pg:.1%}", flush=True)
        rows.append({"budget": budget, "per_group_loss": per_group_loss, "loss": loss, "within": loss <= budget,
                     "scale": scale, "evaluations": len(evaluations), "flops_cut": cut, "flops_cut_per_group": cut_pg})
    result["whole_model"] = rows

    # (c) ---------------------------------------------------------------------------------
    print(f"\n(c) accuracy on all {len(test_data[1])} test digits after fine-tuning {args.finetune_epochs} epoch(s) "
          f"on {args.finetune_images} digits at equal FLOPs, {args.seeds} seeds (mean +- std over seeds; "
          f"before fine-tuning, on the analysis digits, in brackets: as pruned / with the batch-norm statistics "
          f"re-estimated, what the choice compares)")
    rows = []
    for target in TARGETS:
        mine = our_plan_for_flops(weights, test_data, os.path.join(tmp, "flops.json"), target)  # resumed
        net = fresh(weights)
        evaluator = Evaluator(net, test_data)
        bound = Bound(net, PrunableModel(net, SHAPE), evaluator, evaluator())
        uniform = scale_to_flops({g: 1.0 for g in groups}, target, bound.flops_of)
        paddleslim = slim_plan_for_flops(slim, bound, target)
        chosen = next(c["plan"] for c in mine["candidates"] if c["ratios"] is mine["ratios"])
        print(f"pruned_flops={target}: our analysis {mine['analysis_evals']} evaluations (cap {mine['cap']:.3f}) + "
              f"{len(mine['candidates'])} plan evaluations, {mine['wall']:.1f} s (PaddleSlim: {slim['evals']}); "
              f"chosen: {chosen}; candidates " + ", ".join(f"{c['plan']} {c['loss']:+.3f}" for c in mine["candidates"]))
        for label, (ratios, fraction) in (("ours", (mine["ratios"], mine["fraction"])), ("uniform", uniform),
                                          ("PaddleSlim", paddleslim)):
            accs = [finetuned_accuracy(weights, ratios, (train_data, test_data), seed, args.finetune_epochs,
                                       args.finetune_images) for seed in range(args.seeds)]
            before = 1 - bound.loss_of(ratios)
            recalibrated = 1 - bound.loss_of(ratios, recalibrate=True)
            print(f"  {label:11s} FLOPs -{fraction:.1%}  acc {np.mean(accs):.4f} +- {np.std(accs):.4f} "
                  f"(min {min(accs):.4f}, max {max(accs):.4f}) "
                  f"[{before * bound.baseline:.4f} / {recalibrated * bound.baseline:.4f}]", flush=True)
            rows.append({"target": target, "plan": label, "fraction": fraction, "accs": accs,
                         "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                         "before_finetune": before * bound.baseline,
                         "before_finetune_recalibrated": recalibrated * bound.baseline})
    result["finetuned"] = rows
    if args.plot:
        plot_finetuned(rows, args.plot, f"Paddle {paddle.__version__}: fine-tuned {args.finetune_epochs} epoch(s) "
                                        f"on {args.finetune_images} digits, {args.seeds} seeds")
        print(f"plot: {args.plot}")
    result["seconds"] = time.perf_counter() - began
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
