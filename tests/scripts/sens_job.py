"""A sensitivity analysis job for the crash tests: sens_job.py FILE [--workers N].

Deterministic model and metric (similarity to the unpruned model's outputs on fixed inputs), so
a resumed run must reproduce an uninterrupted one exactly.
"""
import argparse
import os
import zlib  # noqa: F401  before paddle (Paddle 2.6 exports an old zlib)

import numpy as np
import paddle
import paddle.nn as nn

from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.sensitivity import (
    SensitivityFile,
    analyze,
    analyze_parallel,
    analyze_sharded,
    architecture_fingerprint,
    weights_fingerprint,
)
from slim_plugins.run import Metric


def build():
    paddle.seed(7)
    # long enough (37 evaluations of about 0.2 s on an idle CI core) that the crash test's
    # kills land before the job ends, however fast the machine
    net = nn.Sequential(nn.Conv2D(3, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU(),
                        nn.Conv2D(32, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(),
                        nn.Conv2D(64, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(),
                        nn.Conv2D(64, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(),
                        nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(64, 10))
    rng = np.random.RandomState(1)
    for p in net.parameters():
        if len(p.shape) > 1:  # conv and linear weights; BN keeps its sane defaults
            p.set_value(paddle.to_tensor(rng.randn(*p.shape).astype("float32") * 0.3))
    net.eval()
    return net


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log", help="append one line per evaluation here")
    parser.add_argument("--sharded", action="store_true", help="rank and world size from PADDLE_TRAINER_*")
    args = parser.parse_args()
    net = build()
    x = paddle.to_tensor(np.random.RandomState(0).randn(96, 3, 24, 24).astype("float32"))
    with paddle.no_grad():
        reference = net(x).numpy()

    def evaluate(max_batches=None):  # cosine similarity of the logits with the unpruned ones
        with paddle.no_grad():
            out = net(x).numpy()
        if args.log:
            with open(args.log, "a") as f:
                f.write("eval\n")
        cos = (out * reference).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
        return float(cos.mean())

    prunable = PrunableModel(net, [1, 3, 24, 24])
    identity = dict(model_fingerprint=architecture_fingerprint(net), weights=weights_fingerprint(net),
                    metric="agree", criterion="l1_norm", max_batches=None)
    if args.sharded:
        rank, world = int(os.environ["PADDLE_TRAINER_ID"]), int(os.environ["PADDLE_TRAINERS_NUM"])
        analyze_sharded(prunable, Metric("agree", evaluate), args.file, identity, groups=list(prunable.groups),
                        rank=rank, world_size=world, workers=args.workers, show_progress=False)
        print("complete")
        return
    sfile = SensitivityFile.open(args.file, model_fingerprint=architecture_fingerprint(net),
                                 weights=weights_fingerprint(net), metric="agree", criterion="l1_norm",
                                 max_batches=None)
    run = analyze_parallel if args.workers > 1 else analyze
    extra = {"workers": args.workers} if args.workers > 1 else {}
    run(prunable, Metric("agree", evaluate), sfile, groups=list(prunable.groups), show_progress=False, **extra)
    print("complete")


if __name__ == "__main__":
    main()
