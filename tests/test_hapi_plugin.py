"""An unchanged hapi training script, run with and without `--plugin prune` (issue: core)."""
import os

import numpy as np
import paddle
import pytest

from conftest import SCRIPTS, last_json

SCRIPT = os.path.join(SCRIPTS, "hapi_digits.py")
UNPRUNED = {"0.weight": [32, 1, 3, 3], "3.weight": [64, 32, 3, 3], "7.weight": [64, 64, 3, 3]}


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    from conftest import run_python

    out = tmp_path_factory.mktemp("pruned")
    proc = run_python([SCRIPT, str(out), "--epochs", "2", "--plugin", "prune",
                       "--prune.ratios", "0.weight=0.5,3.*=0.25"], cwd=str(out))
    return out, proc


def test_without_plugin_the_script_is_untouched(tmp_path, python):
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1"], cwd=str(tmp_path))
    shapes = last_json(proc.stdout)["shapes"]
    for name, shape in UNPRUNED.items():
        assert shapes[name] == shape
    assert "slim-plugins" not in proc.stderr
    assert not os.path.exists(tmp_path / "final.prune.json")


def test_with_plugin_the_trained_model_is_the_pruned_one(pruned_run):
    out, proc = pruned_run
    result = last_json(proc.stdout)
    shapes = result["shapes"]
    assert shapes["0.weight"] == [16, 1, 3, 3]          # 32 * (1 - 0.5)
    assert shapes["3.weight"] == [48, 16, 3, 3]         # 64 * (1 - 0.25), inputs follow conv 0
    assert shapes["7.weight"] == [64, 48, 3, 3]
    assert not any(k.endswith("_backup") for k in shapes), "PaddleSlim backup buffers leaked"
    saved = paddle.load(str(out / "final.pdparams"))
    assert list(saved["0.weight"].shape) == [16, 1, 3, 3]
    assert not any("backup" in k for k in saved)
    assert os.path.exists(out / "final.prune.json")
    assert "pruned 2 groups" in proc.stderr
    assert result["acc"] > 0.5


def test_fresh_process_rebuilds_shapes_before_load(pruned_run, python):
    out, proc = pruned_run
    trained_acc = last_json(proc.stdout)["acc"]
    loaded = python([SCRIPT, str(out), "--load", "--export"], cwd=str(out))
    result = last_json(loaded.stdout)
    assert result["shapes"]["0.weight"] == [16, 1, 3, 3]
    assert result["acc"] == pytest.approx(trained_acc, abs=1e-9)
    assert "rebuilt pruned shapes" in loaded.stderr
    # the exported inference model has the pruned shapes and runs
    layer = paddle.jit.load(str(out / "inference"))
    logits = layer(paddle.to_tensor(np.zeros([2, 1, 8, 8], dtype="float32")))
    assert list(logits.shape) == [2, 10]


def test_load_then_fit_prunes_the_loaded_optimizer_state(pruned_run, tmp_path, python):
    """``model.load(...)`` then ``fit``: Adam's moments are loaded but not yet created when the
    plugin prunes; they must follow the pruned weights (was: a shape error at the first step)."""
    out, _ = pruned_run
    base = tmp_path / "base"
    python([SCRIPT, str(base), "--epochs", "1"], cwd=str(tmp_path))
    tuned = tmp_path / "tuned"
    proc = python([SCRIPT, str(tuned), "--epochs", "1", "--finetune", str(base / "final"), "--plugin", "prune",
                   "--prune.ratios", "0.weight=0.5"], cwd=str(tmp_path))
    result = last_json(proc.stdout)
    assert result["shapes"]["0.weight"] == [16, 1, 3, 3]
    assert result["acc"] > 0.5
    moments = {k: v for k, v in paddle.load(str(tuned / "final.pdopt")).items() if "moment1" in k}
    shapes = [list(v.shape) for v in moments.values()]
    assert [16, 1, 3, 3] in shapes and [32, 1, 3, 3] not in shapes, shapes


def test_hook_order_of_a_hapi_run(slim_session, hook_recorder, tmp_path):
    import paddle.nn as nn
    from paddle.static import InputSpec

    net = nn.Sequential(nn.Conv2D(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model = paddle.Model(net, inputs=[InputSpec([None, 1, 8, 8], "float32", "x")])
    model.prepare(paddle.optimizer.SGD(parameters=net.parameters()), nn.CrossEntropyLoss())
    data = paddle.io.TensorDataset([paddle.zeros([4, 1, 8, 8]), paddle.zeros([4, 1], dtype="int64")])
    model.fit(data, batch_size=2, epochs=1, verbose=0, save_dir=str(tmp_path), save_freq=1)
    model.load(str(tmp_path / "final"))
    model.save(str(tmp_path / "inference"), training=False)
    assert hook_recorder.names() == [
        "slim_before_train", "slim_on_checkpoint_save", "slim_on_checkpoint_save", "slim_after_train",
        "slim_before_load_weights", "slim_before_export"]
    run = hook_recorder.calls[0][1]
    assert run.adapter == "builtin" and run.model is net


def test_flops_target_from_a_yaml_plugin_config(tmp_path, python):
    import json

    cfg = tmp_path / "slim.yml"
    cfg.write_text("plugins:\n  prune:\n    pruned_flops: 0.4\n    sen_ratios: [0.2, 0.4, 0.6, 0.8]\n"
                   f"    report: {tmp_path / 'report.json'}\n")
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1", "--plugin-config", str(cfg)], cwd=str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert 1 - report["after"]["flops"] / report["before"]["flops"] >= 0.4
    assert report["metric_name"] == "acc" and "after_training" in report
    budget = report["budget"]  # the plan with the lowest measured whole-model loss of >= 3 candidates
    assert budget["rule"] == "model" and len(budget["candidates"]) >= 3
    assert all(c["fraction"] >= 0.4 for c in budget["candidates"])
    first, best = budget["candidates"][0], min(budget["candidates"], key=lambda c: c["loss"])
    assert first["plan"] == "loss-budget bisection"  # replaced only by a plan clearly better (margin 0.05)
    assert budget["whole_model_loss_chosen"] == (best["loss"] if best["loss"] < first["loss"] - 0.05
                                                 else first["loss"])
    assert budget["whole_model_loss"] == pytest.approx(budget["whole_model_loss_chosen"], abs=1e-9)
    assert "derived_loss_cap" in report  # the pruned_flops analysis was bounded by a cap
    assert (tmp_path / "output" / "sensitivities.png").exists()
    assert (tmp_path / "output" / "sensitivities.flops.png").exists()
    assert "ETA" in proc.stderr


def test_eval_metric_loss_holds_for_the_whole_model(tmp_path, python):
    import json

    python([SCRIPT, str(tmp_path / "base"), "--epochs", "3"], cwd=str(tmp_path))
    reports = {}
    for rule in ("per_group", "model"):
        out = tmp_path / rule
        python([SCRIPT, str(out), "--finetune", str(tmp_path / "base" / "final"), "--epochs", "1",
                "--plugin", "prune", "--prune.eval_metric_loss", "0.05", "--prune.budget_rule", rule,
                "--prune.report", str(out / "report.json")], cwd=str(tmp_path))
        reports[rule] = json.loads((out / "report.json").read_text())
    per_group, model = reports["per_group"]["budget"], reports["model"]["budget"]
    assert per_group["whole_model_loss"] > 0.05 and not per_group["within_budget"]  # PaddleSlim's rule overshoots
    assert model["backoff"][0]["loss"] == pytest.approx(per_group["whole_model_loss"], abs=1e-9)
    assert model["whole_model_loss"] <= 0.05 and model["within_budget"] and model["scale"] < 1
    assert all(e["loss"] <= 0.05 for e in model["per_group"].values())
    assert reports["model"]["after"]["flops"] < reports["model"]["before"]["flops"]


def test_show_lists_groups_and_exits_before_training(tmp_path, python):
    proc = python([SCRIPT, str(tmp_path), "--plugin", "prune", "--prune.action", "show"], cwd=str(tmp_path))
    assert "conv weight" in proc.stdout and "0.weight" in proc.stdout and "prunable" in proc.stdout
    assert "model output" in proc.stdout or "skipped" in proc.stdout
    assert not (tmp_path / "final.pdparams").exists()


def test_misspelt_plugin_and_option_are_clear_errors(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "--plugin", "prnue"], cwd=str(tmp_path),
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown plugin 'prnue'" in proc.stderr and "known plugins: prune" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "--plugin", "prune", "--prune.eval_metric_los",
                           "0.1"], cwd=str(tmp_path), capture_output=True, text=True)
    assert proc.returncode != 0 and "eval_metric_los" in proc.stderr and "eval_metric_loss" in proc.stderr
