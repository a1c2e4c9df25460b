"""Sensitivity analysis of the demo's DigitsNet through the builtin (hapi) adapter, timed: a
``paddle.Model.fit`` script run with ``--plugin prune --prune.action analyze``.

prepare: 3 epochs of training without the plugin on scikit-learn's digits.
analyze: ratios 0.1 ... 0.9 of every group, accuracy on all 1,797 digits (29 batches of 64).

    python benchmarks/sens_builtin_job.py [prepare WORK | analyze WORK]
    python benchmarks/sens_builtin_job.py train OUT [--epochs N] [--pretrain PATH] [--plugin ...]
        the hapi training script both steps run (knows nothing of slim-plugins)
"""
import argparse
import os
import sys

import suite_job

RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def train(argv):
    parser = argparse.ArgumentParser(prog="sens_builtin_job.py train")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrain")
    args = parser.parse_args(argv)

    import zlib  # noqa: F401  before paddle (Paddle 2.6 exports an old zlib)

    import paddle
    import paddle.nn as nn

    from slim_plugins.demo import DigitsNet, digits_datasets, hapi_model

    paddle.seed(0)
    train_data, _ = digits_datasets()
    _, every_digit = digits_datasets(test_size=1797)
    model = hapi_model(DigitsNet())
    model.prepare(paddle.optimizer.Adam(learning_rate=0.003, parameters=model.parameters()),
                  nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    if args.pretrain:
        model.load(args.pretrain)
    model.fit(train_data, every_digit, batch_size=64, epochs=args.epochs, eval_freq=args.epochs, save_dir=args.out,
              verbose=0)


def prepare(work):
    suite_job.run_command([__file__, "train", os.path.join(work, "base"), "--epochs", "3"], cwd=work)


def analyze(work, out):
    lines = suite_job.run_command([__file__, "train", out, "--epochs", "1", "--pretrain",
                                   os.path.join(work, "base", "final")] + suite_job.analysis_options(RATIOS),
                                  cwd=work)
    return suite_job.result("builtin", "DigitsNet", lines, os.path.join(out, "sensitivities.json"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        train(sys.argv[2:])
    else:
        suite_job.main(prepare, analyze)
