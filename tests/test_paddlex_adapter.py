"""PaddleX 2.1 scripts pruned by the paddlex adapter (issue 6).

The tests train MobileNetV2 (traceable on Paddle 2.6 and 3.x; MobileNetV3's SE block is not on
3.x) from scratch on a tiny image-folder set they draw themselves, then prune it on the command
line, from PaddleX 1.3's ``train(sensitivities_file=..., eval_metric_loss=...)``, and through
the environment of a child process, and reload the pruned models with ``paddlex.load_model``.

The detector (YOLOv3 + MobileNetV1) is in test_paddlex_detector.py: it is trained too briefly
for a meaningful mAP and checks consistency only.
"""
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import (
    SCRIPTS,
    clean_env,
    last_json,
    paddle_inference,
    run_python,
    train_paddlex_script,
    write_paddlex_lists,
)

HAVE_PADDLEX = importlib.util.find_spec("paddlex") is not None
needs_paddlex = pytest.mark.skipif(
    not HAVE_PADDLEX,
    reason="paddlex is not installed (pip install --no-deps paddlex==2.1.0 and its real needs: see docs/paddlex.md)")
SCRIPT = os.path.join(SCRIPTS, "paddlex_shapes.py")
CLASSES = ("red", "green", "blue")
FIRST_CONV = "conv1._conv.weight"


def make_shapes_set(root, n_train=12, n_val=6, size=32, seed=0):
    """An image-folder set for pdx.datasets.ImageNet: a square, circle or triangle whose colour
    is tinted by class (so a network learns it from scratch in a few epochs)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    lists = {"train": [], "val": []}
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for split, count in (("train", n_train), ("val", n_val)):
            for i in range(count):
                image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 80, 3)))
                colour = [int(c) for c in rng.integers(40, 120, 3)]
                colour[label] = int(rng.integers(200, 256))
                r = int(rng.integers(size // 6, size // 3))
                cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
                shape = int(rng.integers(0, 3))
                draw = ImageDraw.Draw(image)
                box = [cx - r, cy - r, cx + r, cy + r]
                if shape == 0:
                    draw.rectangle(box, fill=tuple(colour))
                elif shape == 1:
                    draw.ellipse(box, fill=tuple(colour))
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=tuple(colour))
                rel = f"{name}/{split}_{i}.jpg"
                image.save(os.path.join(root, rel), quality=95)
                lists[split].append(f"{rel} {label}")
    return write_paddlex_lists(root, CLASSES, lists)


def shapes_of(proc):
    return last_json(proc.stdout)


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return make_shapes_set(str(tmp_path_factory.mktemp("shapes")))


@pytest.fixture(scope="module")
def baseline(shapes_set, tmp_path_factory):
    """MobileNetV2 trained from scratch, no plugin: the model the other tests prune."""
    return train_paddlex_script(tmp_path_factory, "baseline", SCRIPT, shapes_set, 10)


@pytest.fixture(scope="module")
def pruned(shapes_set, baseline, tmp_path_factory):
    """The unchanged script with `--plugin prune --prune.eval_metric_loss`, fine-tuning the baseline."""
    return train_paddlex_script(tmp_path_factory, "pruned", SCRIPT, shapes_set, 3,
                                baseline[0] / "best_model" / "model.pdparams", "--plugin", "prune",
                                "--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", "0.3,0.6")


def test_adapter_module_imports_without_paddlex(tmp_path):
    code = ("import sys\n"
            "class NoPaddleX:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'paddlex':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, NoPaddleX())\n"
            "import slim_plugins.adapters.paddlex\n"
            "from slim_plugins.session import Session\n"
            "print('paddlex' in Session(autoload=False).adapters)")
    proc = run_python(["-c", code], cwd=str(tmp_path))
    assert proc.stdout.strip().splitlines()[-1] == "True"


@needs_paddlex
def test_without_plugin_the_script_is_untouched(baseline):
    out, proc = baseline
    result = shapes_of(proc)
    assert result["shapes"][FIRST_CONV] == [32, 3, 3, 3]
    assert not (out / "best_model" / "model.prune.json").exists()
    assert "slim-plugins" not in proc.stderr
    best = [float(v) for v in re.findall(r"best model on eval_dataset is epoch_\d+, acc1=([0-9.]+)", proc.stdout)]
    assert best and best[-1] > 0.34, "the baseline did not learn: the pruning tests below would mean little"


@needs_paddlex
def test_command_line_prunes_before_paddlex_trains(baseline, pruned):
    out, proc = pruned
    before, after = shapes_of(baseline[1]), shapes_of(proc)
    plan = json.loads((out / "best_model" / "model.prune.json").read_text())
    report = json.loads((out / "prune_report.json").read_text())
    assert after["flops"] < before["flops"]
    assert plan["flops"]["after"] < plan["flops"]["before"]
    # paddle.flops and our counter differ in what they count, not in the pruned fraction
    assert 1 - after["flops"] / before["flops"] == pytest.approx(
        1 - plan["flops"]["after"] / plan["flops"]["before"], abs=0.02)
    for name, shape in plan["shapes"].items():
        assert after["shapes"][name] == shape
    assert report["metric_name"] == "acc1" and 0 < report["baseline_metric"] <= 1  # of best_model, the pretrain
    # the final line names the checkpoint PaddleX keeps as best, with the acc1 PaddleX logged for it
    best = report["after_training"]["best_checkpoint"]
    logged = re.findall(r"best model on eval_dataset is epoch_\d+, acc1=([0-9.]+)", proc.stdout + proc.stderr)
    assert best["path"] == str(out / "best_model") and best["metric"] == pytest.approx(float(logged[-1]), abs=1e-6)
    assert f"the best checkpoint {out / 'best_model'}: acc1 {best['metric']:.4f}" in proc.stderr
    import paddle

    saved = paddle.load(str(out / "best_model" / "model.pdparams"))
    assert not any(k.endswith("_backup") for k in saved)
    assert [list(saved[k].shape) for k in plan["shapes"]] == list(plan["shapes"].values())
    assert "slim_before_train" not in proc.stderr and "pruned" in proc.stderr


@needs_paddlex
def test_fresh_process_load_model_rebuilds_the_pruned_network(shapes_set, pruned, tmp_path):
    out, proc = pruned
    trained = shapes_of(proc)
    # the script measured the last epoch's model (best_model may be an earlier one)
    loaded = run_python([SCRIPT, shapes_set, str(tmp_path), "--load", str(out / "epoch_3"), "--export"],
                        cwd=str(tmp_path))
    result = shapes_of(loaded)
    assert "rebuilt pruned shapes" in loaded.stderr
    assert result["acc1"] == pytest.approx(trained["acc1"], abs=1e-9)
    assert result["flops"] == trained["flops"] and result["shapes"] == trained["shapes"]
    assert result["predicted"] in CLASSES
    assert (tmp_path / "inference_model" / "model.prune.json").exists()


@needs_paddlex
def test_resnet50_vd_pruned_by_the_train_script_reloads_and_exports(shapes_set, tmp_path_factory, tmp_path):
    """PaddleX ResNet50_vd (residual stages: the shortcut convs and each stage's last conv are
    one group): trained, then the unchanged script with fixed ratios on every group fine-tunes
    it; a fresh process's ``load_model`` equals the end of training, and the export computes the
    same output in Paddle Inference."""
    base, _ = train_paddlex_script(tmp_path_factory, "resnet_base", SCRIPT, shapes_set, 2, None,
                                   "--arch", "ResNet50_vd")
    out, proc = train_paddlex_script(tmp_path_factory, "resnet_pruned", SCRIPT, shapes_set, 1,
                                     base / "best_model" / "model.pdparams", "--arch", "ResNet50_vd",
                                     "--plugin", "prune", "--prune.ratios", "*=0.3")
    trained = shapes_of(proc)
    plan = json.loads((out / "epoch_1" / "model.prune.json").read_text())
    assert 1 - plan["flops"]["after"] / plan["flops"]["before"] > 0.4
    residual = [name for name in plan["shapes"] if re.fullmatch(r"blocks\.\d+\.short\.conv\.weight", name)]
    assert residual, sorted(plan["shapes"])[:20]  # the residual-coupled groups were pruned too
    loaded = run_python([SCRIPT, shapes_set, str(tmp_path), "--load", str(out / "epoch_1"), "--export"],
                        cwd=str(tmp_path))
    result = shapes_of(loaded)
    assert result["acc1"] == pytest.approx(trained["acc1"], abs=1e-9)
    assert result["flops"] == trained["flops"] and result["shapes"] == trained["shapes"]
    probe = np.load(tmp_path / "probe_in.npy")
    outputs = paddle_inference(tmp_path / "inference_model", "model", probe)
    np.testing.assert_allclose(outputs[0], np.load(tmp_path / "probe_out.npy"), atol=1e-4)


@needs_paddlex
def test_a_pruned_run_never_writes_into_the_trained_models_folder(shapes_set, baseline, tmp_path):
    """save_dir holding pretrain_weights: PaddleX would write the pruned epoch_N/ and best_model/
    over the trained model; refused in one line before any work, the trained model untouched."""
    import shutil

    trained = tmp_path / "trained"
    shutil.copytree(baseline[0] / "best_model", trained / "best_model")
    weights = trained / "best_model" / "model.pdparams"
    stamp = weights.stat().st_mtime_ns
    proc = subprocess.run([sys.executable, SCRIPT, shapes_set, str(trained), "--epochs", "1", "--pretrain",
                           str(weights), "--plugin", "prune", "--prune.ratios", "*=0.3"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("slim-plugins: error:")]
    assert len(ours) == 1 and f"save_dir={str(trained)!r} holds the trained model" in ours[0]
    assert f"save_dir={str(trained) + '_prune'!r}" in ours[0]
    assert weights.stat().st_mtime_ns == stamp and not (trained / "epoch_1").exists()


@needs_paddlex
def test_pruned_checkpoint_without_its_plan_is_a_clear_error(shapes_set, pruned, tmp_path):
    out, _ = pruned
    lost = tmp_path / "lost"
    shutil.copytree(out / "best_model", lost, ignore=shutil.ignore_patterns("*.prune.json"))
    proc = subprocess.run([sys.executable, SCRIPT, shapes_set, str(tmp_path), "--load", str(lost)],
                          cwd=str(tmp_path), capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # one line, like every slim-plugins error
    assert "slim-plugins: error: [paddlex]" in proc.stderr and "does not fit the model" in proc.stderr
    assert f"there is no pruning plan {lost / 'model.prune.json'}" in proc.stderr


@needs_paddlex
def test_paddlex_13_flow_with_a_legacy_sensitivity_pickle(shapes_set, baseline, tmp_path):
    """train(pretrain_weights=<model dir>, sensitivities_file=*.sensi.data, eval_metric_loss=0.05)"""
    f64 = np.float64
    legacy = {"conv1_1_weights": {f64(0.1): f64(0.0), f64(0.2): f64(0.02), f64(0.4): f64(0.08)},
              "conv3_1_expand_weights": {f64(0.1): f64(0.01), f64(0.5): f64(0.04), f64(0.9): f64(0.5)},
              "conv2_1_dwise_weights": {f64(0.5): f64(0.0)}}  # depthwise: follows its producer
    sensi = tmp_path / "mobilenetv2.sensi.data"
    sensi.write_bytes(pickle.dumps(legacy))
    out = tmp_path / "out"
    proc = run_python([SCRIPT, shapes_set, str(out), "--epochs", "1", "--pretrain", str(baseline[0] / "best_model"),
                       "--sensitivities-file", str(sensi), "--eval-metric-loss", "0.05"], cwd=str(tmp_path))
    plan = json.loads((out / "best_model" / "model.prune.json").read_text())
    # largest measured ratio within the budget, interpolated towards the next one
    assert plan["ratios"] == {FIRST_CONV: pytest.approx(0.3),
                              "conv3._first_block._expand_conv._conv.weight": pytest.approx(0.5 + 0.01 / 0.46 * 0.4)}
    assert plan["channels"][FIRST_CONV] == [32, 22]
    assert shapes_of(proc)["shapes"][FIRST_CONV] == [22, 3, 3, 3]
    assert "sensitivity analysis of" not in proc.stderr  # the file is the answer, as in PaddleX 1.3


@needs_paddlex
def test_activation_reaches_a_child_process_through_the_environment(shapes_set, baseline, pruned, tmp_path):
    """A parent program that knows nothing of slim-plugins starts the script with only the
    SLIM_PLUGINS* variables set; the child prunes (reusing the recorded sensitivities)."""
    out = tmp_path / "child"
    options = {"prune": {"eval_metric_loss": 0.1, "sen_ratios": "0.3,0.6",
                         "sen_file": str(pruned[0] / "sensitivities.json")}}
    parent = ("import os, subprocess, sys\n"
              f"sys.exit(subprocess.call([sys.executable, {SCRIPT!r}, {shapes_set!r}, {str(out)!r}, '--epochs', '1',"
              f" '--pretrain', {str(baseline[0] / 'best_model' / 'model.pdparams')!r}]))\n")
    proc = run_python(["-c", parent], cwd=str(tmp_path),
                      env={"SLIM_PLUGINS": "prune", "SLIM_PLUGINS_OPTIONS": json.dumps(options)})
    plan = json.loads((out / "best_model" / "model.prune.json").read_text())
    first = json.loads((pruned[0] / "best_model" / "model.prune.json").read_text())
    assert plan["ratios"] == first["ratios"] and plan["shapes"] == first["shapes"]
    assert "ETA" not in proc.stderr  # every sensitivity was already recorded


@needs_paddlex
@pytest.mark.parametrize("how", ["python", "config file"])
def test_python_and_config_file_activation(shapes_set, baseline, tmp_path, how):
    out = tmp_path / "out"
    args = [SCRIPT, shapes_set, str(out), "--epochs", "1", "--pretrain",
            str(baseline[0] / "best_model" / "model.pdparams")]
    if how == "python":
        args += ["--enable-prune", json.dumps({"ratios": {"conv1.*": 0.5}})]
    else:
        (tmp_path / "slim.yml").write_text("plugins:\n  prune:\n    ratios: {'conv1.*': 0.5}\n")
        args += ["--plugin-config", str(tmp_path / "slim.yml")]
    proc = run_python(args, cwd=str(tmp_path))
    assert shapes_of(proc)["shapes"][FIRST_CONV] == [16, 3, 3, 3]
    assert (out / "best_model" / "model.prune.json").exists()


@needs_paddlex
def test_hook_order_of_a_paddlex_run(slim_session, hook_recorder, shapes_set, baseline, tmp_path):
    import paddlex as pdx
    from paddlex import transforms as T

    from slim_plugins.testing import check_adapter

    def dataset(split, transforms):
        return pdx.datasets.ImageNet(data_dir=shapes_set, file_list=os.path.join(shapes_set, f"{split}_list.txt"),
                                     label_list=os.path.join(shapes_set, "labels.txt"),
                                     transforms=T.Compose(transforms), num_workers=0)

    train, val = dataset("train", [T.Normalize()]), dataset("val", [T.Normalize()])
    model = pdx.cls.MobileNetV2(num_classes=3)
    weights = str(baseline[0] / "best_model" / "model.pdparams")
    model.train(num_epochs=1, train_dataset=train, train_batch_size=6, eval_dataset=val, learning_rate=0.001,
                pretrain_weights=weights, save_dir=str(tmp_path / "out"), use_vdl=False)
    run = hook_recorder.calls[0][1]
    assert run.adapter == "paddlex" and run.model is model.net and run.optimizer is model.optimizer
    check_adapter(run)
    assert run.metric.name == "acc1"
    loaded = pdx.load_model(str(tmp_path / "out" / "best_model"))
    loaded._export_inference_model(str(tmp_path / "export"))
    assert hook_recorder.names() == [
        "slim_before_load_weights", "slim_after_load_weights", "slim_before_train", "slim_on_checkpoint_save",
        "slim_on_checkpoint_save", "slim_after_train", "slim_on_run_end", "slim_before_load_weights",
        "slim_after_load_weights", "slim_before_export", "slim_on_checkpoint_save"]
    assert hook_recorder.calls[0][2]["path"] == weights
    assert hook_recorder.calls[1][2] == {"path": weights, "exact": False}  # pretrained: a head may differ
    assert hook_recorder.calls[7][2]["path"] == str(tmp_path / "out" / "best_model")


@needs_paddlex
def test_sensitivities_file_default_is_refused_with_a_hint(slim_session, shapes_set):
    import paddlex as pdx

    from slim_plugins.errors import AdapterError

    model = pdx.cls.MobileNetV2(num_classes=3)
    with pytest.raises(AdapterError, match="DEFAULT"):
        model.train(num_epochs=1, train_dataset=None, sensitivities_file="DEFAULT", eval_metric_loss=0.05)


@needs_paddlex
def test_metric_scores_the_same_samples_every_time(shapes_set, baseline, tmp_path):
    weights = baseline[0] / "best_model" / "model.pdparams"
    proc = run_python([os.path.join(SCRIPTS, "metric_twice.py"), "1", SCRIPT, shapes_set, str(tmp_path / "out"),
                       "--epochs", "1", "--pretrain", str(weights)], cwd=str(tmp_path))
    result = last_json(proc.stdout)
    assert result["name"] == "acc1" and result["chance"] == pytest.approx(1 / 3)
    assert result["limited"][0] == result["limited"][1] and result["all"][0] == result["all"][1]


@needs_paddlex
def test_sensitivity_workers_finish_and_equal_one_process(shapes_set, baseline, tmp_path):
    weights = baseline[0] / "best_model" / "model.pdparams"
    records = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run_python([SCRIPT, shapes_set, str(out), "--epochs", "1", "--pretrain", str(weights), "--plugin", "prune",
                    "--prune.action", "analyze", "--prune.sen_ratios", "0.3", "--prune.sen_workers", str(workers),
                    "--prune.sen_file", str(out / "sens.json")], cwd=str(tmp_path), timeout=400)
        data = json.loads((out / "sens.json").read_text())
        records.append({g: {r: e["metric"] for r, e in v["ratios"].items()} for g, v in data["groups"].items()})
    assert records[0] and records[0] == records[1]
