"""One sensitivity analysis of the builtin (hapi) model, timed; prints JSON on its last line.

Run by bench_paddle_versions.py under each Paddle; usable alone:
    python benchmarks/sens_builtin_job.py
"""
import json
import tempfile
import time

from slim_plugins import compat  # noqa: F401

import paddle

from bench_sensitivity import RATIOS, SHAPE, Evaluator, fresh_model, trained_weights
from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.sensitivity import SensitivityFile, analyze
from slim_plugins.run import Metric


def main():
    weights = trained_weights(3)
    net = fresh_model(weights)
    start = time.perf_counter()
    prunable = PrunableModel(net, SHAPE)
    traced = time.perf_counter() - start
    sfile = SensitivityFile.new(tempfile.mktemp(suffix=".json"), model_fingerprint=None, weights=None,
                                metric="acc", criterion="l1_norm", max_batches=None)
    analyze(prunable, Metric("acc", Evaluator(net)), sfile, groups=list(prunable.groups), ratios=RATIOS,
            show_progress=False)
    print(json.dumps({"adapter": "builtin", "model": "DigitsNet", "paddle": paddle.__version__,
                      "trace_seconds": traced, "analysis_seconds": time.perf_counter() - start,
                      "evaluations": 1 + sum(len(g["ratios"]) for g in sfile.data["groups"].values())}))


if __name__ == "__main__":
    main()
