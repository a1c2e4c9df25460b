"""Sensitivity analysis of a PaddleX 2.1 classifier (MobileNetV2, as in
tests/test_paddlex_adapter.py), timed, through the tests' PaddleX training script
(tests/scripts/paddlex_shapes.py) with ``--plugin prune --prune.action analyze``.

prepare: the tests' image-folder set (test_paddlex_adapter.make_shapes_set) with a larger val
split, and 10 epochs of training from scratch without the plugin.
analyze: ratios 0.2, 0.4 and 0.6 of every prunable group, acc1 on all 30 val images.

    python benchmarks/sens_paddlex_job.py [prepare WORK | analyze WORK]
"""
import os

import suite_job

SCRIPT = os.path.join(suite_job.SCRIPTS, "paddlex_shapes.py")
RATIOS = (0.2, 0.4, 0.6)
N_TRAIN, N_VAL = 12, 10  # per class; PaddleX evaluates 6 a batch: 5 batches


def prepare(work):
    data = os.path.join(work, "shapes")
    suite_job.tests_module("test_paddlex_adapter").make_shapes_set(data, n_train=N_TRAIN, n_val=N_VAL)
    suite_job.run_command([SCRIPT, data, os.path.join(work, "base"), "--epochs", "10"], cwd=work)


def analyze(work, out):
    weights = os.path.join(work, "base", "best_model", "model.pdparams")
    lines = suite_job.run_command([SCRIPT, os.path.join(work, "shapes"), out, "--epochs", "1", "--pretrain", weights]
                                  + suite_job.analysis_options(RATIOS), cwd=work)
    return suite_job.result("paddlex", "MobileNetV2", lines, os.path.join(out, "sensitivities.json"))


if __name__ == "__main__":
    suite_job.main(prepare, analyze)
