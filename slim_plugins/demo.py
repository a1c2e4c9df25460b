"""``slim-plugins demo``: the whole prune workflow on the embedded default.

A small CNN is trained with ``paddle.Model.fit`` on scikit-learn's bundled digits; then the
prune plugin is switched on from Python and a second ``fit`` fine-tunes: the builtin adapter
fires ``slim_before_train``, exactly as for any hapi script run with ``--plugin prune``, and the
plugin analyses sensitivities, picks ratios under the accuracy-loss budget and prunes.
"""
import os
import sys
import tempfile
import time
import zlib  # noqa: F401  before paddle (Paddle 2.6 exports an old zlib)

import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from slim_plugins.plugins.prune import latency, measure, report
from slim_plugins.progress import Progress

LATENCY_BATCH = 64


class ArrayDataset(paddle.io.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __len__(self):
        return len(self.labels)


def digits_datasets(test_size=360, seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype("float32") / 16.0)[:, None]
    labels = digits.target.astype("int64")[:, None]
    order = np.random.RandomState(seed).permutation(len(labels))
    test, train = order[:test_size], order[test_size:]
    return ArrayDataset(images[train], labels[train]), ArrayDataset(images[test], labels[test])


class DigitsNet(nn.Layer):
    """Three conv blocks and a classifier: 8x8 grey digits -> 10 classes."""

    def __init__(self, width=48):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2D(cin, cout, 3, padding=1, bias_attr=False), nn.BatchNorm2D(cout), nn.ReLU())

        self.stem = block(1, width)
        self.conv1 = block(width, 2 * width)
        self.pool = nn.MaxPool2D(2)
        self.conv2 = block(2 * width, 2 * width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(2 * width, 10))

    def forward(self, x):
        return self.head(self.conv2(self.pool(self.conv1(self.stem(x)))))


class EpochProgress(paddle.callbacks.Callback):
    """Epoch-level progress with ETA for hapi's fit."""

    def __init__(self, label):
        super().__init__()
        self.label = label

    def on_train_begin(self, logs=None):
        self.progress = Progress(self.params.get("epochs", 1), self.label)

    def on_epoch_end(self, epoch, logs=None):
        loss = logs.get("loss") if logs else None
        loss = loss[0] if isinstance(loss, (list, tuple)) else loss
        self.progress.step(f"loss {loss:.4f}" if loss is not None else "")


def hapi_model(network):
    model = paddle.Model(network, inputs=[InputSpec([None, 1, 8, 8], "float32", "image")],
                         labels=[InputSpec([None, 1], "int64", "label")])
    return model


def figures(model, test, reference=None, batch_size=LATENCY_BATCH, latency_seconds=None):
    """The plugin's own figures: FLOPs at batch 1, latency of the exported model in Paddle
    Inference (1 CPU thread) at batch 1 and at the eval batch size; with the ``reference``
    (the unpruned model, exported), both timed in turns, and the reference's figures too."""
    network = model.network
    one = [paddle.zeros([1, 1, 8, 8])]
    inputs_for = lambda n: [paddle.to_tensor(np.stack([test[i][0] for i in range(n)]))]  # noqa: E731
    exported = latency.Exported(network, inputs_for)
    if reference is None:
        timed = latency.timed(exported, sorted({1, batch_size}))
    else:
        reference_timed, timed = latency.compare(reference, exported, sorted({1, batch_size}),
                                                 **latency.seconds(latency_seconds))
    return {
        "params": measure.parameters(network),
        "flops": measure.flops(network, one),
        "latency": timed if reference is None else (reference_timed, timed),
        "exported": exported,
        "metric": float(model.evaluate(test, batch_size=128, verbose=0)["acc"]),
    }


def run_demo(report_path=None, quick=False, budget=None, workdir=None, seed=0):
    from slim_plugins import compat

    with compat.quiet_batch_norm_warning():
        return _run_demo(report_path, quick, budget, workdir, seed)


def _run_demo(report_path, quick, budget, workdir, seed):
    started = time.perf_counter()
    import slim_plugins

    paddle.seed(seed)
    np.random.seed(seed)
    train, test = digits_datasets()
    epochs, finetune = (4, 2) if quick else (12, 6)
    budget = budget if budget is not None else 0.1
    workdir = workdir or tempfile.mkdtemp(prefix="slim-demo-")
    ratios = [0.2, 0.4, 0.6, 0.8] if quick else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    latency_seconds = 3.0 if quick else 12.0  # each before/after latency comparison, at most (see latency.py)

    print(f"1/3 training DigitsNet on scikit-learn digits ({len(train)} train / {len(test)} test images, "
          f"{epochs} epochs)", file=sys.stderr)
    network = DigitsNet()
    model = hapi_model(network)
    model.prepare(paddle.optimizer.Adam(learning_rate=0.003, parameters=network.parameters()),
                  nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    model.fit(train, test, batch_size=64, epochs=epochs, verbose=0, callbacks=[EpochProgress("train")])
    before = figures(model, test)
    reference = before.pop("exported")

    print(f"2/3 prune plugin: sensitivity analysis, ratios for an accuracy-loss budget of {budget:g}, prune",
          file=sys.stderr)
    sen_file = os.path.join(workdir, "sensitivities.json")
    slim_plugins.enable("prune", eval_metric_loss=budget, sen_file=sen_file, sen_ratios=ratios,
                        report=os.path.join(workdir, "prune_report.json"), latency_seconds=latency_seconds)
    finetuner = hapi_model(network)
    finetuner.prepare(paddle.optimizer.Adam(learning_rate=0.001, parameters=network.parameters()),
                      nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    print(f"3/3 fine-tuning the pruned model ({finetune} epochs)", file=sys.stderr)
    finetuner.fit(train, test, batch_size=64, epochs=finetune, verbose=0, save_dir=workdir,
                  save_freq=finetune, callbacks=[EpochProgress("fine-tune")])
    after = figures(finetuner, test, reference, latency_seconds=latency_seconds)
    after.pop("exported")
    before["latency"], after["latency"] = after["latency"]  # timed alongside, in the same minute
    result = finetuner._slim_run.results.get("prune")
    prune_report = result.report if result is not None else {}

    print()
    print(report.before_after_table(before, after, "accuracy"))
    result = {
        "before": before, "after": after,
        "flops_reduction": 1 - after["flops"] / before["flops"],
        "params_reduction": 1 - after["params"] / before["params"],
        "accuracy_change_points": 100 * (after["metric"] - before["metric"]),
        "eval_metric_loss": budget, "ratios": prune_report.get("ratios"),
        "whole_model_loss": (prune_report.get("budget") or {}).get("whole_model_loss"),
        "channels": prune_report.get("channels"),
        "sensitivity_file": sen_file, "checkpoint": os.path.join(workdir, "final"),
        "paddle": paddle.__version__, "seconds": round(time.perf_counter() - started, 1),
        "latency_batch_size": LATENCY_BATCH,
    }
    print(f"\nFLOPs -{result['flops_reduction']:.1%}, accuracy {result['accuracy_change_points']:+.2f} points, "
          f"{result['seconds']:.0f} s (Paddle {paddle.__version__})")
    if report_path:
        from slim_plugins.plugins.prune.sensitivity import SensitivityFile, write_json_atomic

        missing = report.plotting_unavailable()
        plot = None if missing else os.path.splitext(report_path)[0] + ".png"
        if plot:
            report.plot_sensitivities(SensitivityFile.load(sen_file).losses(), plot, "accuracy", budget=budget,
                                      chosen=prune_report.get("ratios"))
        result["plot"] = plot
        write_json_atomic(report_path, result)
        print(f"report: {report_path}\n" + (f"sensitivity curves: {plot}" if plot else missing))
    return result
