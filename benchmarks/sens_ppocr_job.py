"""Sensitivity analysis of a PaddleOCR 2.10 DB text detector (MobileNetV3-small x0.5, as in
tests/test_ppocr_adapter.py), timed, through PaddleOCR's own tools/train.py with
``--plugin prune --prune.action analyze``.

prepare: the tests' detection set and config (test_ppocr_adapter.make_det_set, det_config) and
the tests' baseline: 144 steps of training without the plugin.
analyze: ratios 0.1 ... 0.9 of every prunable group, hmean on all 8 test images.

    python benchmarks/sens_ppocr_job.py [prepare WORK | analyze WORK]
"""
import os
import random

import suite_job

RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
BATCHES = 8  # the test set is 8 images, 1 a batch


def _tests():
    return suite_job.tests_module("test_ppocr_adapter")


def prepare(work):
    import yaml

    tests = _tests()
    if tests.ROOT is None:
        raise SystemExit("PaddleOCR's tools are not installed (pip install --no-deps unstructured-paddleocr==2.10.0)")
    rng = random.Random(0)
    tests.make_det_set(os.path.join(work, "det"), "train", 16, rng)
    tests.make_det_set(os.path.join(work, "det"), "test", 8, rng)
    with open(os.path.join(work, "det.yml"), "w") as f:
        yaml.safe_dump(tests.det_config(os.path.join(work, "det")), f, sort_keys=False)
    suite_job.run_command([tests.tool("train.py"), "-c", "det.yml", "-o", "Global.epoch_num=36",
                           "Global.save_model_dir=./det_base"], cwd=work)


def analyze(work, out):
    weights = os.path.join(work, "det_base", "latest")
    lines = suite_job.run_command([_tests().tool("train.py"), "-c", "det.yml", "-o", "Global.epoch_num=1",
                                   f"Global.save_model_dir={out}", f"Global.pretrained_model={weights}"]
                                  + suite_job.analysis_options(RATIOS, BATCHES), cwd=work)
    return suite_job.result("ppocr", "DB-MobileNetV3", lines, os.path.join(out, "sensitivities.json"))


if __name__ == "__main__":
    suite_job.main(prepare, analyze)
