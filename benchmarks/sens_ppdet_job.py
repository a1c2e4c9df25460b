"""Sensitivity analysis of PaddleDetection's PicoDet-s (tests/data/ppdet/picodet_s_shapes.yml),
timed, through ppdet's train command with ``--plugin prune --prune.action analyze``.

prepare: the tests' shapes set (tests/scripts/ppdet_shapes.py) and 12 epochs of training
without the plugin, through the tests' stand-in for tools/train.py (which also applies the
assigner fix paddledet 2.6.0 lacks on Paddle 3).
analyze: ratios 0.3 and 0.6 of every prunable group, COCO mAP on all 16 val images.

    python benchmarks/sens_ppdet_job.py [prepare WORK | analyze WORK]
"""
import os

import suite_job

CONFIG = os.path.join(suite_job.TESTS, "data", "ppdet", "picodet_s_shapes.yml")
NAME = "picodet_s_shapes"
TOOLS = os.path.join(suite_job.SCRIPTS, "ppdet_tools.py")
RATIOS, BATCHES = (0.3, 0.6), 4  # the val set is 16 images, 4 a batch


def prepare(work):
    suite_job.run_command([os.path.join(suite_job.SCRIPTS, "ppdet_shapes.py"), os.path.join(work, "data", "shapes")],
                          cwd=work)
    suite_job.run_command([TOOLS, "train", "-c", CONFIG, "-o", "epoch=12", "save_dir=base"], cwd=work)


def analyze(work, out):
    weights = os.path.join(work, "base", NAME, "model_final")
    lines = suite_job.run_command([TOOLS, "train", "-c", CONFIG, "-o", "epoch=1", f"save_dir={out}",
                                   f"pretrain_weights={weights}"] + suite_job.analysis_options(RATIOS, BATCHES),
                                  cwd=work)
    return suite_job.result("ppdet", "PicoDet-s", lines, os.path.join(out, NAME, "sensitivities.json"))


if __name__ == "__main__":
    suite_job.main(prepare, analyze)
