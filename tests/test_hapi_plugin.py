"""An unchanged hapi training script, run with and without `--plugin prune` (issue: core)."""
import json
import os
import re

import numpy as np
import paddle
import pytest

from conftest import SCRIPTS, last_json

SCRIPT = os.path.join(SCRIPTS, "hapi_digits.py")
UNPRUNED = {"0.weight": [32, 1, 3, 3], "3.weight": [64, 32, 3, 3], "7.weight": [64, 64, 3, 3]}
BATCH_NORM_WARNING = "When training, we now always track global mean and variance"


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
    assert BATCH_NORM_WARNING in proc.stderr  # Paddle's, left alone when no plugin is on
    # no plugin: only the load is patched (a pruned checkpoint's plan is replayed there)
    assert last_json(proc.stdout)["patched"] == {"fit": False, "save": False, "load": True, "data_parallel": False}


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
    assert re.search(r"after training: acc 0\.\d{4}$", proc.stderr, re.M)  # fixed ratios: no 'before pruning None'
    assert result["acc"] > 0.5
    assert result["patched"] == {"fit": True, "save": True, "load": True, "data_parallel": True}
    assert BATCH_NORM_WARNING not in proc.stderr  # the plugin's lines are not drowned in it


def test_without_matplotlib_plots_are_skipped_with_one_line(tmp_path, trained, python):
    """matplotlib is the [plot] extra: a run without it prunes and says once why there is no plot."""
    blocked = ("import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = python(["-c", blocked, SCRIPT, str(tmp_path), "--epochs", "1", "--init", str(trained), "--plugin", "prune",
                   "--prune.eval_metric_loss", "0.5", "--prune.sen_ratios", "0.5", "--prune.sen_batches", "1"],
                  cwd=str(tmp_path))
    line = 'plots skipped: matplotlib is not installed (pip install "slim-plugins[plot]")'
    assert proc.stderr.count(line) == 1
    assert "pruned" in proc.stderr and list(tmp_path.rglob("sensitivities.json"))
    assert not list(tmp_path.rglob("*.png"))


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
        "slim_on_run_end", "slim_before_load_weights", "slim_after_load_weights", "slim_before_export"]
    run = hook_recorder.calls[0][1]
    assert run.adapter == "builtin" and run.model is net
    assert hook_recorder.calls[4][2] == {"error": None}


def test_an_interrupted_fit_ends_the_run_with_its_exception(slim_session, hook_recorder):
    """Ctrl-C in the middle of fit: ``slim_on_run_end`` gets the KeyboardInterrupt, then it goes on."""
    import paddle.nn as nn
    from paddle.static import InputSpec

    class Interrupt(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            raise KeyboardInterrupt

    net = nn.Sequential(nn.Conv2D(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model = paddle.Model(net, inputs=[InputSpec([None, 1, 8, 8], "float32", "x")])
    model.prepare(paddle.optimizer.SGD(parameters=net.parameters()), nn.CrossEntropyLoss())
    data = paddle.io.TensorDataset([paddle.zeros([4, 1, 8, 8]), paddle.zeros([4, 1], dtype="int64")])
    with pytest.raises(KeyboardInterrupt):
        model.fit(data, batch_size=2, epochs=1, verbose=0, callbacks=[Interrupt()])
    assert hook_recorder.names() == ["slim_before_train", "slim_on_run_end"]
    assert isinstance(hook_recorder.calls[-1][2]["error"], KeyboardInterrupt)


def test_flops_target_from_a_yaml_plugin_config(tmp_path, python, trained):
    import json

    cfg = tmp_path / "slim.yml"
    cfg.write_text("plugins:\n  prune:\n    pruned_flops: 0.4\n    sen_ratios: [0.2, 0.4, 0.6, 0.8]\n"
                   f"    report: {tmp_path / 'report.json'}\n")
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1", "--init", str(trained), "--plugin-config", str(cfg)],
                  cwd=str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert 1 - report["after"]["flops"] / report["before"]["flops"] >= 0.4
    assert report["metric_name"] == "acc" and "after_training" in report
    budget = report["budget"]  # the plan with the lowest measured whole-model loss of >= 3 candidates
    assert budget["rule"] == "model" and len(budget["candidates"]) >= 3
    assert all(c["fraction"] >= 0.4 for c in budget["candidates"])
    first, best = budget["candidates"][0], min(budget["candidates"], key=lambda c: c["loss"])
    assert first["plan"] == "loss-budget bisection"
    # compared with the batch norms' statistics re-estimated, as fine-tuning starts from them; the
    # pruned model keeps the statistics it had (its own loss, measured as pruned, is reported too)
    assert budget["batch_norm_recalibrated"] is True
    assert budget["whole_model_loss_chosen"] == best["loss"]
    assert isinstance(budget["whole_model_loss"], float)
    assert "derived_loss_cap" in report  # the pruned_flops analysis was bounded by a cap
    # the curves beside the sensitivity file, FLOPs against budget beside the report (issue 14)
    plots = [os.path.join(tmp_path, p) for p in report["plots"]]
    assert plots == [str(tmp_path / "output" / "sensitivities.png"), str(tmp_path / "report.flops.png")]
    assert all(os.path.getsize(p) > 0 for p in plots)
    assert "ETA" in proc.stderr
    assert_user_lines_are_readable(proc.stderr)


def assert_user_lines_are_readable(stderr):
    """What the plugin prints: a progress total that never changes, no raw floats, no None."""
    ours = [line for line in stderr.splitlines() if line.startswith(("[slim-plugins", "slim-plugins"))]
    runs = []  # (done, total) of each progress bar: a new bar starts at 1
    for found in (re.search(r" sensitivity[^/]* (\d+)/(\d+) ", line) for line in ours):
        if found:
            done, total = map(int, found.groups())
            if done == 1:
                runs.append([])
            runs[-1].append(total)
    assert runs and all(len(set(totals)) == 1 for totals in runs), runs
    assert not [line for line in ours if re.search(r"\d\.\d{7,}", line) or "None" in line], ours


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


def test_show_is_a_typed_stop_with_status_0(slim_session, hook_recorder, capsys):
    """In-process, ``action=show`` ends ``fit`` with :class:`StopRun` (exit status 0) after the
    inventory is printed, before any training step or the after-train hook."""
    import paddle.nn as nn
    from paddle.static import InputSpec

    from slim_plugins.errors import StopRun

    net = nn.Sequential(nn.Conv2D(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model = paddle.Model(net, inputs=[InputSpec([None, 1, 8, 8], "float32", "x")])
    model.prepare(paddle.optimizer.SGD(parameters=net.parameters()), nn.CrossEntropyLoss())
    data = paddle.io.TensorDataset([paddle.zeros([4, 1, 8, 8]), paddle.zeros([4, 1], dtype="int64")])
    assert slim_session.stops_before_train() is None
    slim_session.enable("prune", {"action": "show"})
    assert slim_session.stops_before_train() == "prune.action=show"  # adapters may leave out train loaders
    eager = []  # show's time is its eager forwards: one per traced pass, no before-pruning latency
    net.register_forward_pre_hook(lambda _layer, _inputs: eager.append(1) if paddle.in_dynamic_mode() else None)
    with pytest.raises(StopRun) as stop:
        model.fit(data, batch_size=2, epochs=1, verbose=0)
    assert stop.value.code == 0 and stop.value.reason == "prune.action=show"
    assert "0.weight" in capsys.readouterr().out
    assert hook_recorder.names() == ["slim_before_train", "slim_on_run_end"]  # no training, no after-train
    assert len(eager) == 3  # eval, train, and eval at twice the size (which fails: Linear)


def test_show_of_a_pruned_checkpoint_lists_it_and_never_trains(pruned_run, tmp_path, python):
    """A model that carries a plan (loaded from a pruned checkpoint) is not pruned again, but
    ``action show`` still ends the run before training: adapters rely on it to leave out the train
    loader (was: the run trained on)."""
    out, _ = pruned_run
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1", "--init", str(out / "final"), "--plugin", "prune",
                   "--prune.action", "show"], cwd=str(tmp_path))
    assert "prune.action=show of the pruned model" in proc.stderr
    assert re.search(r"^0\.weight\s+16x1x3x3", proc.stdout, re.M), proc.stdout[-2000:]
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


# -------------------------------------------------------------------------------- errors (issue 12)
def user_error(args, cwd, env=None, within=30):
    """Run the hapi script expecting a slim-plugins user error: exit 2, one line on stderr that
    is ours, no traceback, no training; returns that line."""
    import subprocess
    import sys
    import time

    from conftest import clean_env

    weights = cwd / "final.pdparams"
    before = weights.stat().st_mtime_ns if weights.exists() else None
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, SCRIPT, str(cwd)] + list(args), cwd=str(cwd), env=clean_env(env),
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if "slim-plugins:" in line or "error" in line.lower()]
    assert len(ours) == 1 and ours[0].startswith("slim-plugins: error:"), proc.stderr[-3000:]
    assert (weights.stat().st_mtime_ns if weights.exists() else None) == before, "it trained"
    assert seconds < within, f"the error came after {seconds:.1f} s"
    return ours[0]


@pytest.mark.parametrize("args, named", [
    (["--prune.pruned_flops", "1.5"], "pruned_flops='1.5'"),
    (["--prune.pruned_flops", "0"], "pruned_flops='0'"),
    (["--prune.eval_metric_loss", "-1"], "eval_metric_loss='-1'"),
    (["--prune.eval_metric_loss", "2"], "eval_metric_loss='2'"),
    (["--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", ""], "sen_ratios=''"),
    (["--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", "0.5,1"], "sen_ratios='0.5,1'"),
    (["--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", "0,0.5"], "sen_ratios='0,0.5'"),
    (["--prune.eval_metric_loss", "0.1", "--prune.sen_workers", "0"], "sen_workers='0'"),
    (["--prune.eval_metric_loss", "0.1", "--prune.sen_batches", "0"], "sen_batches='0'"),
    (["--prune.ratios", "0.weight=0.5", "--prune.align", "0"], "align='0'"),
    (["--prune.pruned_latency", "1"], "pruned_latency='1'"),
    (["--prune.pruned_latency", "0.3", "--prune.latency_batch_size", "0"], "latency_batch_size='0'"),
])
def test_invalid_options_stop_before_any_work(tmp_path, args, named):
    line = user_error(["--plugin", "prune"] + args, tmp_path)
    assert named in line and (" is outside " in line or "empty" in line), line


def test_latency_target_excludes_the_other_ways_to_choose_ratios(tmp_path):
    line = user_error(["--plugin", "prune", "--prune.pruned_latency", "0.3", "--prune.pruned_flops", "0.3"], tmp_path)
    assert "choose ratios one way only, got pruned_flops, pruned_latency" in line, line


def test_analyze_with_fixed_ratios_is_refused(tmp_path):
    """``action analyze`` ends the run after the analysis, which fixed ratios skip (was: pruned and trained)."""
    line = user_error(["--plugin", "prune", "--prune.action", "analyze", "--prune.ratios", "0.weight=0.5"], tmp_path)
    assert "prune.action analyze runs a sensitivity analysis, which fixed prune.ratios skip" in line, line


def test_latency_target_is_searched_with_measured_latency(tmp_path, python, trained):
    """pruned_latency: every candidate plan is exported and timed in Paddle Inference (no timing
    threshold here: the run's own measurements must show the target reached and labelled)."""
    report_path = tmp_path / "report.json"
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1", "--init", str(trained), "--plugin", "prune",
                   "--prune.pruned_latency", "0.3", "--prune.sen_ratios", "0.3,0.8", "--prune.sen_batches", "2",
                   "--prune.latency_seconds", "3",
                   "--prune.plot", "false", "--prune.report", str(report_path)], cwd=str(tmp_path))
    report = json.loads(report_path.read_text())
    labels = {"latency (Paddle Inference CPU, batch 1, 1 thread)", "latency (Paddle Inference CPU, batch 64, 1 thread)"}
    for side in ("before", "after"):  # batch 1 and the eval batch size (fit's 64), with runtime and threads
        assert {e["label"] for e in report[side]["latency"]} == labels
        assert all(e["ms"] > 0 and e["runs"] >= 20 for e in report[side]["latency"])
    # the pruned model's cuts: paired with the unpruned model's runs, each with its interval
    assert all(e["cut_low"] <= e["cut"] <= e["cut_high"] and e["pairs"] == e["runs"]
               for e in report["after"]["latency"])
    for label in labels:
        assert f"{label}: " in proc.stderr and " ms (" in proc.stderr
    searched = report["budget"]["latency"]
    assert searched["target"] == 0.3 and searched["batch_size"] == 64 and searched["runtime"] == "Paddle Inference CPU"
    evaluations = searched["evaluations"]
    assert evaluations and all(e["ms"] > 0 for e in evaluations)
    # the chosen plan is the measured one closest to the target among those that reach it
    reached = [e for e in evaluations if e["cut"] >= 0.3 - searched["tolerance"]]
    assert reached and searched["cut"] == min(reached, key=lambda e: abs(e["cut"] - 0.3))["cut"]
    assert searched["cut_low"] <= searched["cut"] <= searched["cut_high"]
    assert report["ratios"] and report["after"]["flops"] < report["before"]["flops"]
    chosen = next(e for e in evaluations if e["cut"] == searched["cut"])
    assert chosen["groups"] == len(report["ratios"])
    assert "ONNX Runtime" in proc.stderr  # measured, or one line saying how to get it


@pytest.mark.parametrize("section, named", [
    ("plugins: {prune: [1, 2]}", "[1, 2]"),
    ("plugins: [prune, 7]", "7"),
])
def test_invalid_plugins_sections_stop_before_any_work(tmp_path, section, named):
    (tmp_path / "slim.yml").write_text(section + "\n")
    line = user_error(["--plugin-config", str(tmp_path / "slim.yml")], tmp_path)
    assert named in line and "hint:" in line, line


def test_an_unreadable_activation_stops_before_training(tmp_path):
    """Fail closed: an activation that cannot be read never trains the unpruned model."""
    line = user_error([], tmp_path, env={"SLIM_PLUGINS": "prune", "SLIM_PLUGINS_OPTIONS": "{bad"})
    assert "SLIM_PLUGINS_OPTIONS='{bad'" in line and "not valid JSON" in line


def test_a_flag_before_another_option_takes_true(tmp_path, python):
    proc = python([SCRIPT, str(tmp_path), "--plugin", "prune", "--prune.action", "show", "--prune.plot",
                   "--epochs", "1"], cwd=str(tmp_path))
    assert "prunable" in proc.stdout


def test_an_unusable_sensitivity_file_is_one_line_naming_it(tmp_path):
    import pickle

    (tmp_path / "folder").mkdir()
    line = user_error(["--plugin", "prune", "--prune.eval_metric_loss", "0.1", "--prune.sen_file",
                       str(tmp_path / "folder")], tmp_path, within=120)
    assert f"{tmp_path / 'folder'} is a directory" in line and "hint:" in line
    with open(tmp_path / "old.sensi.data", "wb") as f:
        pickle.dump({"conv2d_0.w_0": {0.1: 0.01}}, f)
    line = user_error(["--plugin", "prune", "--prune.eval_metric_loss", "0.1", "--prune.sen_file",
                       str(tmp_path / "old.sensi.data")], tmp_path, within=120)
    assert "pickle" in line and "slim-plugins sens import" in line
    (tmp_path / "bare.json").write_text('{"format": "slim-plugins/sensitivity"}')
    line = user_error(["--plugin", "prune", "--prune.eval_metric_loss", "0.1", "--prune.sen_file",
                       str(tmp_path / "bare.json")], tmp_path, within=120)
    assert f"{tmp_path / 'bare.json'} is incomplete" in line


def test_a_pruned_checkpoint_without_its_plan_names_the_plan_file(pruned_run, tmp_path):
    import shutil

    out, _ = pruned_run
    for name in ("final.pdparams", "final.pdopt"):
        shutil.copy(out / name, tmp_path / name)
    line = user_error(["--load"], tmp_path)
    assert str(tmp_path / "final.prune.json") in line and "does not fit the model" in line
    assert "0.weight: checkpoint [16, 1, 3, 3], model [32, 1, 3, 3]" in line
    plan = tmp_path / "final.prune.json"
    plan.write_text('{"format": "slim-plugins/prune-plan", "version": 1}')
    line = user_error(["--load"], tmp_path)
    assert f"{plan} is incomplete: it has no criterion" in line and "hint:" in line
    plan.unlink()
    plan.mkdir()
    line = user_error(["--load"], tmp_path)
    assert f"{plan} is a directory" in line


def test_plans_and_reports_follow_the_umask_as_the_weights_do(pruned_run):
    out, _ = pruned_run
    weights_mode = os.stat(out / "final.pdparams").st_mode & 0o777
    for name in ("final.prune.json", "output/prune_plan.json", "output/prune_report.json"):
        assert os.stat(out / name).st_mode & 0o777 == weights_mode, name


KILL_AFTER_WEIGHTS = """
import os, runpy, signal, sys
import paddle
save = paddle.save
def save_then_die(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)
    if str(path).endswith(".pdparams"):
        os.kill(os.getpid(), signal.SIGKILL)
paddle.save = save_then_die
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_kill_right_after_the_weights_leaves_a_loadable_checkpoint(tmp_path, python):
    """Pruned again with other ratios into the same folder, killed the moment the new weights
    are on disk: the plan beside them must be the new one."""
    import subprocess
    import sys

    from conftest import clean_env

    python([SCRIPT, str(tmp_path), "--epochs", "1", "--plugin", "prune", "--prune.ratios", "0.weight=0.5"],
           cwd=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_WEIGHTS, SCRIPT, str(tmp_path), "--epochs", "1",
                           "--plugin", "prune", "--prune.ratios", "0.weight=0.25"], cwd=str(tmp_path),
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert list(paddle.load(str(tmp_path / "final.pdparams"))["0.weight"].shape) == [24, 1, 3, 3]
    loaded = python([SCRIPT, str(tmp_path), "--load"], cwd=str(tmp_path))
    assert last_json(loaded.stdout)["shapes"]["0.weight"] == [24, 1, 3, 3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The script's own model trained 2 epochs without the plugin: weights worth analysing."""
    from conftest import run_python

    out = tmp_path_factory.mktemp("trained")
    proc = run_python([SCRIPT, str(out), "--epochs", "2"], cwd=str(out))
    (out / "acc.json").write_text(json.dumps(last_json(proc.stdout)["acc"]))  # its accuracy on the eval data
    return out / "final"


def test_metric_scores_the_same_batches_every_time(tmp_path, python):
    twice = os.path.join(SCRIPTS, "metric_twice.py")
    result = last_json(python([twice, "2", SCRIPT, str(tmp_path), "--epochs", "1"], cwd=str(tmp_path)).stdout)
    assert result["name"] == "acc" and result["chance"] == pytest.approx(0.1)
    assert result["limited"][0] == result["limited"][1]
    assert result["all"][0] == result["all"][1]


def test_an_evaluation_that_sees_no_batch_is_an_error(slim_session, tmp_path, capsys):
    import paddle.nn as nn
    from paddle.static import InputSpec

    net = nn.Sequential(nn.Conv2D(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model = paddle.Model(net, inputs=[InputSpec([None, 1, 8, 8], "float32", "x")],
                         labels=[InputSpec([None, 1], "int64", "y")])
    model.prepare(paddle.optimizer.SGD(parameters=net.parameters()), nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    data = paddle.io.TensorDataset([paddle.rand([4, 1, 8, 8]), paddle.zeros([4, 1], dtype="int64")])
    empty = paddle.io.TensorDataset([paddle.zeros([0, 1, 8, 8]), paddle.zeros([0, 1], dtype="int64")])
    slim_session.enable("prune", {"eval_metric_loss": 0.1, "sen_ratios": "0.5",
                                  "sen_file": str(tmp_path / "sens.json")})
    with pytest.raises(SystemExit) as stop:
        model.fit(data, empty, batch_size=2, epochs=1, verbose=0, save_dir=str(tmp_path))
    assert stop.value.code == 2
    assert "an evaluation saw no batch of the eval_data given to fit" in capsys.readouterr().err
    assert not (tmp_path / "sens.json").exists()  # nothing recorded


def test_sensitivity_workers_finish_and_equal_one_process(tmp_path, trained, python):
    args = [SCRIPT, "--epochs", "1", "--init", str(trained), "--plugin", "prune", "--prune.action", "analyze",
            "--prune.eval_metric_loss", "0.05", "--prune.sen_ratios", "0.3,0.6", "--prune.sen_batches", "3",
            "--prune.plot", "false"]
    files = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        proc = python([args[0], str(out)] + args[1:] + ["--prune.sen_workers", str(workers),
                                                         "--prune.sen_file", str(out / "sens.json")],
                      cwd=str(tmp_path), timeout=300)
        assert "analysis done" in proc.stderr
        files[workers] = json.loads((out / "sens.json").read_text())
    records = {w: {g: v["ratios"] for g, v in f["groups"].items()} for w, f in files.items()}
    strip = {w: {g: {r: e["metric"] for r, e in rs.items()} for g, rs in recs.items()} for w, recs in records.items()}
    assert strip[1] and strip[1] == strip[2] == strip[3]


def test_untrained_model_is_refused_before_the_analysis_but_fixed_ratios_prune(tmp_path, python):
    import subprocess
    import sys

    from conftest import clean_env

    proc = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "--epochs", "1", "--plugin", "prune",
                           "--prune.eval_metric_loss", "0.05", "--prune.sen_ratios", "0.3,0.6"],
                          cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("slim-plugins: error:")]
    assert len(error) == 1 and "looks untrained" in error[0] and "at chance (0.1)" in error[0]
    assert "hint: analyse trained weights: --prune.weights PATH" in proc.stderr
    assert "--prune.after_epochs N" in proc.stderr and "paddle.Model.load before fit" in proc.stderr
    assert "Traceback" not in proc.stderr and "ETA" not in proc.stderr  # no sensitivity evaluation ran
    assert not (tmp_path / "output" / "sensitivities.json").exists()
    assert not (tmp_path / "final.pdparams").exists()
    # fixed ratios need no metric: the same untrained model is pruned
    proc = python([SCRIPT, str(tmp_path / "fixed"), "--epochs", "1", "--plugin", "prune",
                   "--prune.ratios", "0.weight=0.5"], cwd=str(tmp_path))
    assert last_json(proc.stdout)["shapes"]["0.weight"] == [16, 1, 3, 3]


@pytest.mark.parametrize("ratio, kept", [(0.9, [3, 6, 6]), (0.99, [1, 1, 1])])
def test_every_group_at_high_ratios_replays_in_a_fresh_process(tmp_path, python, ratio, kept):
    """Every group pruned hard (0.99 leaves one channel), trained, then loaded, evaluated and
    exported by a fresh process from the plan alone."""
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1", "--plugin", "prune", "--prune.ratios", f"*={ratio}"],
                  cwd=str(tmp_path))
    trained = last_json(proc.stdout)
    assert [trained["shapes"][k][0] for k in ("0.weight", "3.weight", "7.weight")] == kept
    loaded = python([SCRIPT, str(tmp_path), "--load", "--export"], cwd=str(tmp_path))
    result = last_json(loaded.stdout)
    assert result["shapes"] == trained["shapes"]
    assert result["acc"] == pytest.approx(trained["acc"], abs=1e-9)
    layer = paddle.jit.load(str(tmp_path / "inference"))
    assert list(layer(paddle.zeros([2, 1, 8, 8])).shape) == [2, 10]


# -------------------------------------------------------------------------------- trained weights (issue 14)
def test_prune_weights_analyses_the_trained_weights(tmp_path, trained, python):
    """A script that trains from scratch, given --prune.weights: the analysis sees the trained
    model (no untrained refusal; the baseline is the trained model's accuracy), then prunes."""
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1", "--plugin", "prune", "--prune.weights", str(trained),
                   "--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", "0.3,0.6",
                   "--prune.report", str(tmp_path / "report.json")], cwd=str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    trained_acc = json.loads((trained.parent / "acc.json").read_text())
    assert report["baseline_metric"] == pytest.approx(trained_acc, abs=1e-9)
    assert report["before"]["metric"] == pytest.approx(trained_acc, abs=1e-9)
    assert f"loaded the trained weights {trained} before the analysis" in proc.stderr
    assert report["after"]["flops"] < report["before"]["flops"]
    assert last_json(proc.stdout)["acc"] > 0.8


def test_prune_weights_that_do_not_exist_stop_before_any_work(tmp_path):
    line = user_error(["--plugin", "prune", "--prune.eval_metric_loss", "0.1", "--prune.weights", "nowhere/final"],
                      tmp_path)
    assert "weights='nowhere/final'" in line and "there is no weights file nowhere/final.pdparams" in line


def test_after_epochs_not_below_the_epochs_of_fit_stops_before_training(tmp_path):
    line = user_error(["--epochs", "2", "--plugin", "prune", "--prune.after_epochs", "2",
                       "--prune.eval_metric_loss", "0.1"], tmp_path)
    assert "after_epochs=2 leaves no epoch to train the pruned model: fit runs 2" in line


def test_after_epochs_trains_prunes_at_the_boundary_and_finishes(tmp_path, python):
    """One command: 1 epoch from scratch, analysis and pruning of those weights, 2 more epochs
    of the pruned model (Adam's moments, created in epoch 1, pruned with the weights); every
    checkpoint fit writes from the boundary on carries the plan, and a fresh process reloads
    the final one with the pruned shapes and the same accuracy."""
    ckpt = tmp_path / "ckpt"
    proc = python([SCRIPT, str(tmp_path), "--epochs", "3", "--save-dir", str(ckpt), "--plugin", "prune",
                   "--prune.after_epochs", "1", "--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", "0.3,0.6"],
                  cwd=str(tmp_path))
    assert "trained 1 epoch (prune.after_epochs): analysing and pruning now" in proc.stderr
    report = json.loads((ckpt / "prune_report.json").read_text())
    assert report["baseline_metric"] > 0.5  # one epoch's weights were analysed, not random ones
    assert report["after"]["flops"] < report["before"]["flops"]
    result = last_json(proc.stdout)
    pruned = {k: v for k, v in result["shapes"].items() if k in UNPRUNED and v != UNPRUNED[k]}
    assert pruned and result["acc"] > 0.8
    assert report["after_training"]["metric"] == pytest.approx(result["acc"], abs=1e-9)
    # fit's own numbering goes on: 0 (the boundary: pruned after the epoch, saved with its plan), 1, 2, final
    assert sorted(p.name for p in ckpt.glob("*.pdparams")) == ["0.pdparams", "1.pdparams", "2.pdparams",
                                                               "final.pdparams"]
    for name in ("0", "1", "2", "final"):
        assert (ckpt / f"{name}.prune.json").exists(), name
    moments = [list(v.shape) for k, v in paddle.load(str(ckpt / "final.pdopt")).items() if "moment1" in k]
    assert all(shape in [list(s) for s in result["shapes"].values()] for shape in moments)
    loaded = last_json(python([SCRIPT, str(tmp_path), "--load"], cwd=str(tmp_path)).stdout)
    assert loaded["shapes"] == result["shapes"]
    assert loaded["acc"] == pytest.approx(result["acc"], abs=1e-9)


@pytest.mark.parametrize("adapter, way", [("ppdet", "-o pretrain_weights=PATH"),
                                          ("ppocr", "-o Global.pretrained_model=PATH"),
                                          ("paddlex", "pretrain_weights=PATH/model.pdparams")])
def test_weights_and_after_epochs_elsewhere_name_the_suites_own_way(slim_session, tmp_path, adapter, way):
    """Only hapi's loop loads --prune.weights and has the epoch boundary after_epochs needs: on
    the other suites each is one error naming the suite and its own pretrained-weights option."""
    from slim_plugins.errors import OptionError
    from slim_plugins.plugins.prune.workflow import check_schedule

    (tmp_path / "w.pdparams").write_bytes(b"")
    for option, value, says in (("weights", str(tmp_path / "w"), "--prune.weights is for hapi scripts"),
                                ("after_epochs", "1", "--prune.after_epochs: the")):
        slim_session.enable("prune", {option: value, "eval_metric_loss": 0.1})
        run = slim_session.new_run(adapter)
        with pytest.raises(OptionError) as error:
            check_schedule(run, run.plugin_config("prune"))
        assert says in str(error.value) and f"the {adapter} adapter" in str(error.value)
        assert way in str(error.value) and "\n" not in str(error.value)
        slim_session.options.given["prune"].pop(option)
