"""PaddleDetection (paddledet 2.6): the unchanged train / eval / export / resume commands with the
prune plugin, on a generated COCO-format set of coloured rectangles (issue 4).

PicoDet-s (LCNet, LCPAN, PicoHeadV2 with EMA) is the main model; YOLOv3 + MobileNetV1 x0.25 the
second architecture. Every ppdet command runs in its own process, as a user runs them.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import HERE, SCRIPTS, clean_env, last_json, paddle_inference
from slim_plugins import compat
from slim_plugins.errors import OptionError

TOOLS = os.path.join(SCRIPTS, "ppdet_tools.py")
CONFIGS = os.path.join(HERE, "data", "ppdet")
PICO, YOLO = "picodet_s_shapes", "yolov3_mbv1_shapes"
AP = re.compile(r"Average Precision\s+\(AP\) @\[ IoU=0\.50:0\.95 \| area=\s*all \| maxDets=100 \] = ([-\d.]+)")

needs_ppdet = pytest.mark.skipif(
    importlib.util.find_spec("ppdet") is None,
    reason="paddledet is not installed (pip install --no-deps paddledet==2.6.0 and its imports: see docs/ppdet.md)")


def tools(args, cwd, env=None, check=True, timeout=420):
    """``python ppdet_tools.py ARGS`` in a fresh process (a hung data loader dies with a traceback)."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", TOOLS] + list(args), cwd=str(cwd), env=clean_env(env),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def config(name):
    return os.path.join(CONFIGS, name + ".yml")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppdet")
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "ppdet_shapes.py"), str(root / "data" / "shapes")],
                   check=True, timeout=120)
    return root


@pytest.fixture(scope="module")
def baseline(work):
    """PicoDet trained for 60 iterations without any plugin: the pretrained weights to prune."""
    tools(["train", "-c", config(PICO), "-o", "epoch=12", "save_dir=base"], work)
    return work / "base" / PICO / "model_final"


@pytest.fixture(scope="module")
def pruned(work, baseline):
    """`--plugin prune` added to the train command: sensitivity analysis, 30% of the FLOPs removed,
    two epochs of ppdet's own fine-tuning."""
    proc = tools(["train", "-c", config(PICO), "-o", "epoch=2", "save_dir=pruned", f"pretrain_weights={baseline}",
                  "--plugin", "prune", "--prune.pruned_flops", "0.3", "--prune.sen_ratios", "0.5",
                  "--prune.sen_batches", "2"], work)
    out = work / "pruned" / PICO
    return out, proc, json.loads((out / "prune_report.json").read_text())


def checkpoint_shapes(path):
    import paddle

    return {k: list(v.shape) for k, v in paddle.load(str(path), return_numpy=True).items()}


# -------------------------------------------------------------------------------- PicoDet
@needs_ppdet
def test_train_prunes_by_the_planned_flops_and_saves_a_smaller_checkpoint(work, baseline, pruned):
    out, proc, report = pruned
    assert (out / "sensitivities.json").exists()  # one output folder: checkpoints, sensitivities, report
    cut = 1 - report["after"]["flops"] / report["before"]["flops"]
    assert 0.3 <= cut < 0.5, cut
    # the candidate plans were compared with their batch norms' statistics re-estimated on ppdet's
    # eval batches (a batch norm in training mode inside ppdet's eval loop), the lowest loss chosen
    budget = report["budget"]
    assert budget["batch_norm_recalibrated"] is True and len(budget["candidates"]) >= 3
    assert budget["whole_model_loss_chosen"] == min(c["loss"] for c in budget["candidates"])
    assert "with batch-norm statistics re-estimated" in proc.stderr
    plan = json.loads((out / "model_final.prune.json").read_text())
    assert plan["flops"] == {"before": report["before"]["flops"], "after": report["after"]["flops"]}
    saved = checkpoint_shapes(out / "model_final.pdparams")
    for name, shape in plan["shapes"].items():
        assert saved[name] == shape  # the model ppdet trained and saved is the pruned one
    assert not any("backup" in k for k in saved)
    unpruned = os.path.getsize(str(baseline) + ".pdparams")
    assert os.path.getsize(out / "model_final.pdparams") < 0.85 * unpruned
    # the trained model was evaluated with ppdet's own COCO metric, before and after
    assert report["metric_name"] == "COCO bbox mAP"
    assert 0 < report["after_training"]["metric"] <= 1
    # what cannot be pruned is said, with the op and the source line: the DFL bins go through a
    # softmax over channels, the class scores into NMS; the neck's convs that feed concat and the
    # depthwise convs (with their producers) are pruned
    assert re.search(r"skip head\.head_reg_list\.0\.weight: softmax over a channel axis \(softmax at \S+:\d+\)",
                     proc.stderr)
    assert re.search(r"skip head\.head_cls_list\.0\.weight: reaches detection post-processing", proc.stderr)
    rows = {row["weight"]: row for row in report["convs"]}
    assert rows["neck.conv_t.convs.0.conv.weight"]["status"] == "prunable"
    assert all(row["status"] == "follows" for name, row in rows.items() if ".dw_conv." in name)
    broken = report.get("broken_groups", {})
    assert all(g.startswith("head.head_reg_list.") for g in broken)
    for group in broken:
        assert f"skip group {group}: pruning it at ratio 0.5 breaks the model" in proc.stderr
        assert group not in plan["ratios"]


@needs_ppdet
def test_fresh_eval_gives_the_metric_of_the_end_of_training(work, pruned):
    out, _, report = pruned
    proc = tools(["eval", "-c", config(PICO), "-o", f"weights={out / 'model_final'}"], work)
    assert "rebuilt pruned shapes" in proc.stderr
    fresh = float(AP.findall(proc.stdout)[-1])
    assert fresh == pytest.approx(report["after_training"]["metric"], abs=6e-4)  # ppdet prints 3 decimals


@needs_ppdet
def predict(exported):
    """Run an exported PicoDet (128 px) in Paddle Inference on CPU; its outputs, in order."""
    feeds = {"image": np.random.RandomState(0).rand(1, 3, 128, 128).astype("float32"),
             "im_shape": np.array([[128.0, 128.0]], "float32"), "scale_factor": np.ones([1, 2], "float32")}
    return paddle_inference(exported, "model", feeds)


@needs_ppdet
def test_export_has_the_pruned_shapes_and_runs(work, pruned):
    """With NMS, on both Paddles: Paddle 3 writes a PIR program, and paddledet 2.6.0's NMS (old
    static API only) is built through Paddle's PIR API while the adapter exports."""
    out, _, _ = pruned
    tools(["export", "-c", config(PICO), "-o", f"weights={out / 'model_final'}", "--output_dir", "inference"], work)
    exported = work / "inference" / PICO
    boxes = predict(exported)[0]
    assert boxes.ndim == 2 and boxes.shape[1] == 6
    assert os.path.getsize(exported / "model.pdiparams") < os.path.getsize(out / "model_final.pdparams") * 1.05


@needs_ppdet
@pytest.mark.skipif(not compat.PADDLE_3, reason="PIR export is Paddle 3's")
def test_pir_export_without_nms_has_the_pruned_shapes_and_runs(work, pruned):
    out, _, _ = pruned
    tools(["export", "-c", config(PICO), "-o", f"weights={out / 'model_final'}", "export.nms=False",
           "--output_dir", "inference_pir"], work)
    exported = work / "inference_pir" / PICO
    assert (exported / "model.json").exists()  # a PIR program, written by paddle.jit.save
    boxes, scores = predict(exported)
    assert boxes.shape[0] == 1 and boxes.shape[2] == 4 and scores.shape == (1, 3, boxes.shape[1])
    assert os.path.getsize(exported / "model.pdiparams") < os.path.getsize(out / "model_final.pdparams") * 1.05


@needs_ppdet
def test_resume_rebuilds_shapes_and_does_not_prune_again(work, pruned):
    out, _, _ = pruned
    before = checkpoint_shapes(out / "model_final.pdparams")
    proc = tools(["train", "-c", config(PICO), "-r", str(out / "model_final"), "-o", "epoch=3", "save_dir=pruned",
                  "--plugin", "prune", "--prune.pruned_flops", "0.3"], work)
    assert "rebuilt pruned shapes" in proc.stderr
    assert "not pruning again" in proc.stderr
    assert "Epoch: [2]" in proc.stdout + proc.stderr
    assert checkpoint_shapes(out / "model_final.pdparams") == before


@needs_ppdet
def test_a_pruned_checkpoint_without_its_plan_is_refused(work, pruned):
    out, _, _ = pruned
    lost = work / "lost"
    lost.mkdir(exist_ok=True)
    shutil.copy(out / "model_final.pdparams", lost / "model.pdparams")
    proc = tools(["eval", "-c", config(PICO), "-o", f"weights={lost / 'model'}"], work, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not fit the model" in proc.stderr and f"no pruning plan {lost / 'model.prune.json'}" in proc.stderr


@needs_ppdet
def test_a_user_error_in_a_hook_is_one_line_and_exit_2(work):
    """An error raised inside a lifecycle hook (through pluggy) on the ppdet path: its line and
    hint, no traceback, before any training."""
    proc = tools(["train", "-c", config(PICO), "-o", "epoch=1", "save_dir=no_mode", "--plugin", "prune"], work,
                 check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("slim-plugins: error:")]
    assert len(ours) == 1 and "no way to choose ratios" in ours[0] and "hint:" in ours[0]
    assert "Epoch:" not in proc.stdout + proc.stderr


@needs_ppdet
def test_show_never_builds_the_train_reader(work):
    """`--prune.action show` ends the run before training: ppdet's TrainReader (annotations parsed,
    worker processes started, batches prefetched) is left out, so a train set that cannot be read
    does not stop it; the same train set stops a training at once."""
    broken = ["-o", "TrainDataset.anno_path=annotations/missing.json", "worker_num=2", "save_dir=show_only"]
    proc = tools(["train", "-c", config(YOLO)] + broken + ["--plugin", "prune", "--prune.action", "show"], work)
    assert "prune.action=show ends the run before training: the train reader is not built" in proc.stderr
    assert re.search(r"^\d+ convs: [1-9]\d* prunable groups", proc.stdout, re.M), proc.stdout[-2000:]
    assert not (work / "show_only").exists()
    failed = tools(["train", "-c", config(YOLO)] + broken + ["--plugin", "prune", "--prune.ratios", "*=0.3"], work,
                   check=False)
    assert failed.returncode != 0 and "missing.json" in failed.stdout + failed.stderr, failed.stderr[-2000:]
    assert "tracing" not in failed.stderr


@needs_ppdet
def test_analyze_only_writes_the_sensitivities_and_leaves_no_temporary_files(work, baseline):
    """Run with develop's checkpoint layout (save_dir itself, not save_dir/<config>): the plugin's
    files go where the checkpoints go, one output folder (the 2.6 layout: the `pruned` run)."""
    tmp = work / "tmp_analyze"
    tmp.mkdir()
    # the analysis never reads the train set (issue 13): an annotation file that is not there is no matter
    proc = tools(["train", "-c", config(PICO), "-o", "save_dir=analyze_only", f"pretrain_weights={baseline}",
                  "TrainDataset.anno_path=annotations/missing.json", "worker_num=2",
                  "--plugin", "prune", "--prune.action", "analyze", "--prune.sen_ratios", "0.5",
                  "--prune.sen_batches", "1"], work, env={"TMPDIR": str(tmp), "PPDET_DEVELOP_LAYOUT": "1"})
    assert "prune.action=analyze ends the run before training: the train reader is not built" in proc.stderr
    sens = json.loads((work / "analyze_only" / "sensitivities.json").read_text())
    assert sens["groups"] and sens["metric"]["baseline"] is not None
    assert not (work / "analyze_only" / PICO).exists()
    assert "Epoch:" not in proc.stdout + proc.stderr  # nothing trained
    assert not (work / "analyze_only" / "model_final.pdparams").exists()
    assert list(tmp.iterdir()) == []


@needs_ppdet
def test_legacy_slim_pruner_config_becomes_fixed_ratios(work, baseline):
    slim = work / "picodet_prune_fpgm.yml"
    slim.write_text(f"pretrain_weights: {baseline}\nepoch: 1\nslim: Pruner\nPruner:\n  criterion: fpgm\n"
                    "  pruned_params: ['backbone.blocks5.2.pw_conv.conv.weight',"
                    " 'neck.top_down_blocks.1.0.pw_conv.*']\n"
                    "  pruned_ratios: [0.5, 0.25]\n")
    tools(["train", "-c", config(PICO), "--slim_config", str(slim), "-o", "save_dir=legacy"], work)
    plan = json.loads((work / "legacy" / "picodet_prune_fpgm" / "model_final.prune.json").read_text())
    assert plan["criterion"] == "fpgm"
    assert plan["channels"] == {"backbone.blocks5.2.pw_conv.conv.weight": [192, 96],
                                "neck.top_down_blocks.1.0.pw_conv.conv.weight": [192, 144]}
    slim.write_text(slim.read_text().replace("backbone.blocks5.2.pw_conv.conv.weight", "backbone.nothing.weight"))
    proc = tools(["train", "-c", config(PICO), "--slim_config", str(slim), "-o", "save_dir=legacy_bad"], work,
                 check=False)
    assert proc.returncode != 0
    assert "'backbone.nothing.weight' names no parameter of this model" in proc.stderr


@needs_ppdet
def test_sens_ratios_gives_a_slim_config_that_ppdet_trains_into_the_same_shapes(work, baseline, pruned, capsys):
    """`slim-plugins sens ratios --format ppdet` on the analysis the plugin wrote: ppdet's own
    --slim_config route trains the same pruned shapes as the plugin with the same budget, and
    the FLOPs the command printed from the file are those of the trained model."""
    from slim_plugins.cli import main

    out, _, _ = pruned
    sens_file = out / "sensitivities.json"
    sens = json.loads(sens_file.read_text())
    losses = sorted(g["ratios"]["0.5"]["loss"] for g in sens["groups"].values() if "0.5" in g["ratios"])
    # about half the groups pruned at 0.5 (a budget is >= 0: on this short-trained detector many
    # losses are negative, and 0 then takes every group whose pruning did not lower the mAP)
    budget = max(0.0, losses[len(losses) // 2])
    assert main(["sens", "ratios", str(sens_file), "--eval-metric-loss", str(budget), "--format", "ppdet"]) == 0
    slim_yaml = capsys.readouterr().out
    assert "pruned_params: ['conv2d_" in slim_yaml  # PaddleSlim's global names, as ppdet's configs have
    assert main(["sens", "ratios", str(sens_file), "--eval-metric-loss", str(budget)]) == 0
    printed = json.loads(capsys.readouterr().out)
    slim = work / "picodet_sens.yml"
    slim.write_text(f"pretrain_weights: {baseline}\nepoch: 1\n" + slim_yaml)
    tools(["train", "-c", config(PICO), "--slim_config", str(slim), "-o", "save_dir=from_yaml"], work)
    from_yaml = json.loads((work / "from_yaml" / "picodet_sens" / "model_final.prune.json").read_text())
    tools(["train", "-c", config(PICO), "-o", "epoch=1", "save_dir=from_plugin", f"pretrain_weights={baseline}",
           "--plugin", "prune", "--prune.eval_metric_loss", str(budget), "--prune.sen_file", str(sens_file),
           "--prune.sen_analyze", "false", "--prune.sen_batches", "2",  # the analysis's own setting
           "--prune.budget_rule", "per_group"], work)  # the rule `sens ratios` applies from the file alone
    from_plugin = json.loads((work / "from_plugin" / PICO / "model_final.prune.json").read_text())
    assert from_yaml["shapes"] == from_plugin["shapes"]
    assert set(from_yaml["ratios"]) == set(printed["ratios"]) == set(from_plugin["ratios"])
    assert from_yaml["channels"] == {g: [n, kept] for g, (kept, n) in printed["kept_channels"].items()}
    assert printed["flops"]["before"] == from_yaml["flops"]["before"]
    # per-layer FLOPs data from single-group probes: within 1% when many groups prune together
    assert printed["flops"]["after"] == pytest.approx(from_yaml["flops"]["after"], rel=0.01)


@needs_ppdet
def test_launch_two_ranks_shard_the_analysis_and_train_the_same_plan(work, baseline):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", "dist_logs",
           TOOLS, "train", "-c", config(PICO), "-o", "epoch=1", "save_dir=dist", f"pretrain_weights={baseline}",
           "--plugin", "prune", "--prune.eval_metric_loss", "0.1", "--prune.sen_ratios", "0.5",
           "--prune.sen_batches", "1"]
    proc = subprocess.run(cmd, cwd=str(work), env=clean_env(), capture_output=True, text=True, timeout=420)
    logs = [(work / "dist_logs" / f"workerlog.{r}").read_text() for r in range(2)]
    assert proc.returncode == 0, proc.stderr[-2000:] + logs[0][-4000:] + logs[1][-2000:]
    shapes = [json.loads([line for line in log.splitlines() if line.startswith('{"shapes"')][-1])["shapes"]
              for log in logs]
    assert shapes[0] == shapes[1]
    out = work / "dist" / PICO
    parts = [json.loads((out / f"sensitivities.rank{r}-of-2.json").read_text())["groups"] for r in range(2)]
    assert parts[0] and parts[1] and set(parts[0]).isdisjoint(parts[1])
    assert set(json.loads((out / "sensitivities.json").read_text())["groups"]) == set(parts[0]) | set(parts[1])
    plan = json.loads((out / "model_final.prune.json").read_text())
    saved = checkpoint_shapes(out / "model_final.pdparams")
    assert all(saved[name] == shape == shapes[0][name] for name, shape in plan["shapes"].items())


# -------------------------------------------------------------------------------- VOC, evaluation
VOC_DATASET = """{split}Dataset:
  name: VOCDataSet
  dataset_dir: data/shapes
  image_dir: .
  anno_path: voc/{anno}.txt
  label_list: voc/label_list.txt
  data_fields: ['image', 'gt_bbox', 'gt_class', 'difficult']
"""


@pytest.fixture(scope="module")
def voc(work):
    """The PicoDet config on the same shapes in Pascal VOC format, scored by ppdet's VOC mAP: its
    eval set is not trimmed for ``sen_batches`` as a COCO one is."""
    text = open(config(PICO)).read().replace("metric: COCO", "metric: VOC\nmap_type: 11point")
    text = re.sub(r"TrainDataset:\n(  .*\n)+", VOC_DATASET.format(split="Train", anno="train"), text)
    text = re.sub(r"EvalDataset:\n(  .*\n)+", VOC_DATASET.format(split="Eval", anno="val"), text)
    path = work / "picodet_s_shapes_voc.yml"
    path.write_text(text)
    return str(path)


@needs_ppdet
def test_metric_scores_the_same_batches_every_time(work, baseline, voc):
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "metric_twice.py"), "2", TOOLS, "train", "-c", voc,
                           "-o", "save_dir=twice", f"pretrain_weights={baseline}"],
                          cwd=str(work), env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["name"] == "VOC bbox mAP (%)" and result["all"][0] > 0
    assert result["limited"][0] == result["limited"][1]  # ppdet's reader kept its place: it did not
    assert result["all"][0] == result["all"][1]


def sensitivity_records(path):
    data = json.loads(path.read_text())
    return data["metric"]["baseline"], {g: ({r: e["metric"] for r, e in v["ratios"].items()}, v.get("failed"))
                                        for g, v in data["groups"].items()}


@needs_ppdet
def test_one_process_two_workers_and_two_ranks_give_identical_sensitivities(work, baseline, voc):
    analyse = ["train", "-c", voc, "-o", f"pretrain_weights={baseline}", "--plugin", "prune", "--prune.action",
               "analyze", "--prune.sen_ratios", "0.5", "--prune.sen_batches", "2"]
    one_proc = tools(analyse[:4] + ["save_dir=sens_one"] + analyse[4:], work)
    # ppdet prints VOC mAP in percent: so does the plugin (was 0.0015 for ppdet's 0.15%)
    assert re.search(r"VOC bbox mAP \(%\) \d+\.\d\d% loss", one_proc.stderr), one_proc.stderr[-2000:]
    tools(analyse[:4] + ["save_dir=sens_workers"] + analyse[4:] + ["--prune.sen_workers", "2"], work, timeout=300)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", "sens_logs",
           TOOLS] + analyse[:4] + ["save_dir=sens_ranks"] + analyse[4:]
    proc = subprocess.run(cmd, cwd=str(work), env=clean_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-2000:] + (work / "sens_logs" / "workerlog.0").read_text()[-3000:]
    name = os.path.splitext(os.path.basename(voc))[0]
    one, workers, ranks = (sensitivity_records(work / d / name / "sensitivities.json")
                           for d in ("sens_one", "sens_workers", "sens_ranks"))
    assert one[0] > 0 and len(one[1]) > 30
    assert one == workers == ranks


@needs_ppdet
def test_best_model_written_as_develop_does_finds_its_plan(work, baseline):
    """PaddleDetection develop with --eval also writes best_model/model.pdparams: eval of it."""
    proc = tools(["train", "-c", config(PICO), "-o", "epoch=1", "save_dir=best", f"pretrain_weights={baseline}",
                  "--eval", "--plugin", "prune", "--prune.ratios", "backbone.blocks5.2.pw_conv.conv.weight=0.5"], work)
    out = work / "best" / PICO
    assert (out / "best_model" / "model.pdparams").exists()
    # the final line names the checkpoint ppdet keeps as best, with the mAP ppdet logged for it
    logged = float(re.findall(r"Best test bbox ap is (\d+\.\d+)", proc.stdout + proc.stderr)[-1])
    best = re.search(r"\(last epoch\); the best checkpoint (\S+): COCO bbox mAP (\d+\.\d+)$", proc.stderr, re.M)
    assert best, proc.stderr[-3000:]
    assert os.path.abspath(os.path.join(work, best.group(1))) == str(out / "best_model")
    assert float(best.group(2)) == pytest.approx(logged, abs=6e-4)  # ppdet prints 3 decimals
    for weights in (out / "best_model", out / "best_model" / "model", out / "model_final"):
        assert (weights.parent / (weights.name + ".prune.json")).exists(), weights
        proc = tools(["eval", "-c", config(PICO), "-o", f"weights={weights}"], work)
        assert "rebuilt pruned shapes" in proc.stderr
        assert last_json(proc.stdout)["shapes"]["backbone.blocks5.2.pw_conv.conv.weight"][0] == 96


# -------------------------------------------------------------------------------- YOLOv3
@needs_ppdet
def test_yolov3_yaml_section_with_ppdet_overrides_and_no_plugin_option(work):
    cfg = work / "yolov3_prune.yml"
    cfg.write_text(open(config(YOLO)).read().replace("epoch: 20", "epoch: 1") + (
        "\nplugins:\n  prune:\n    criterion: l2_norm\n    ratios:\n"
        "      backbone.conv5_*._pointwise_conv._conv.weight: 0.25\n"
        "      neck.yolo_block.0.tip.conv.weight: 0.5\n"))
    proc = tools(["train", "-c", str(cfg), "-o", "save_dir=yolo", "plugins.prune.criterion=fpgm"], work)
    out = work / "yolo" / "yolov3_prune"
    plan = json.loads((out / "model_final.prune.json").read_text())
    assert plan["criterion"] == "fpgm"  # -o reached the section
    assert plan["channels"]["backbone.conv5_1._pointwise_conv._conv.weight"] == [128, 96]
    assert plan["channels"]["neck.yolo_block.0.tip.conv.weight"] == [1024, 512]
    assert len(plan["ratios"]) == 7  # conv5_1 .. conv5_6 and the tip
    saved = checkpoint_shapes(out / "model_final.pdparams")
    assert saved["neck.yolo_block.0.tip.conv.weight"] == [512, 512, 3, 3]
    assert saved["yolo_head.yolo_output.0.weight"][1] == 512
    assert plan["flops"]["after"] < plan["flops"]["before"]
    for head in range(3):
        assert re.search(rf"skip yolo_head\.yolo_output\.{head}\.weight: .*(model output|yolo_box)", proc.stderr)
    # it feeds the FPN route's concat: PaddleSlim skipped it, our graph prunes it (issue 11)
    assert not re.search(r"skip backbone\.conv4_2\._pointwise_conv\._conv\.weight", proc.stderr)
    evaluated = tools(["eval", "-c", str(cfg), "-o", f"weights={out / 'model_final'}"], work)
    assert "rebuilt pruned shapes" in evaluated.stderr  # 5 iterations find no box yet: no AP table
    # ppdet's export (yolo_box and NMS; on Paddle 3 through the adapter's PIR build) runs in Inference
    tools(["export", "-c", str(cfg), "-o", f"weights={out / 'model_final'}", "--output_dir", "yolo_inference"], work)
    exported = work / "yolo_inference" / "yolov3_prune"
    boxes = predict(exported)[0]
    assert boxes.ndim == 2 and boxes.shape[1] == 6 and np.isfinite(boxes).all()


# -------------------------------------------------------------------------------- no ppdet needed
def test_legacy_pruner_section_errors():
    from slim_plugins.adapters.ppdet import legacy_pruner_options

    options = legacy_pruner_options({"criterion": "fpgm", "pruned_params": ["conv2d_27.w_0", "neck.*"],
                                     "pruned_ratios": [0.1, 0.2]})
    assert options == {"ratios": {"conv2d_27.w_0": 0.1, "neck.*": 0.2}, "criterion": "fpgm"}
    with pytest.raises(OptionError, match="2 pruned_params but 1 pruned_ratios"):
        legacy_pruner_options({"pruned_params": ["a", "b"], "pruned_ratios": [0.1]})
    with pytest.raises(OptionError, match="lists no pruned_params"):
        legacy_pruner_options({"pruned_ratios": [0.1]})
    with pytest.raises(OptionError, match="names a more than once"):
        legacy_pruner_options({"pruned_params": ["a", "a"], "pruned_ratios": [0.1, 0.2]})


def test_adapter_imports_without_ppdet(python, tmp_path):
    code = ("import sys; sys.modules['ppdet'] = None\n"
            "import slim_plugins.adapters.ppdet as m\n"
            "from slim_plugins.manager import DEFAULT_ADAPTERS\n"
            "from slim_plugins._boot import WATCHED\n"
            "assert DEFAULT_ADAPTERS['ppdet'] == m.__name__ and WATCHED['ppdet.engine.trainer'] == m.__name__\n"
            "print('{\"ok\": true}')")
    assert last_json(python(["-c", code], cwd=str(tmp_path)).stdout) == {"ok": True}
