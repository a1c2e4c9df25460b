"""PaddleOCR 2.10's own tools/train.py, eval.py and export_model.py with the prune plugin (issue 5).

The tools come from the installed ``unstructured-paddleocr`` distribution (a published copy of
PaddleOCR 2.10.0 with its training code) and run unchanged in subprocesses, on tiny detection
and recognition sets drawn here in PaddleOCR's label formats.
"""
import importlib.machinery
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from ppocr_archs import MOBILE_REC, mobile_det_arch

from conftest import SCRIPTS, clean_env, paddle_inference, run_python
from slim_plugins import compat


def _ppocr_root():
    """The folder holding PaddleOCR's ``ppocr/`` and ``tools/``, or None."""
    from importlib import metadata

    try:
        dist = metadata.distribution("unstructured-paddleocr")
    except metadata.PackageNotFoundError:
        return None
    root = str(dist.locate_file("unstructured_paddleocr"))
    if not os.path.isfile(os.path.join(root, "tools", "program.py")):
        return None
    return root


ROOT = _ppocr_root()
_MISSING = [m for m in ("pyclipper", "shapely", "skimage", "albumentations", "rapidfuzz", "cv2")
            if importlib.machinery.PathFinder.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ROOT is None, reason="PaddleOCR's tools.program/ppocr not importable: "
                                            "pip install --no-deps unstructured-paddleocr==2.10.0"),
    pytest.mark.skipif(bool(_MISSING), reason=f"PaddleOCR's runtime needs {', '.join(_MISSING)}"),
]
# PaddleOCR 2.10 exports DB/CRNN on Paddle 3 only as PIR programs
EXPORT_OPTS = ["Global.export_with_pir=True"] if compat.PADDLE_3 else []

SIZE = 160
DIGITS = "0123456789"
SVTR_SHAPE = (3, 48, 160)  # C, H, W


# ------------------------------------------------------------------ data and configs
def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def make_det_set(folder, split, count, rng):
    """Dark words on light backgrounds; label lines ``path\\t[{"transcription", "points"}]``."""
    from PIL import Image, ImageDraw

    os.makedirs(os.path.join(folder, split), exist_ok=True)
    lines = []
    for i in range(count):
        image = Image.new("RGB", (SIZE, SIZE), tuple(rng.randint(200, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        boxes, taken = [], []
        for _ in range(rng.randint(1, 3)):
            for _attempt in range(20):
                font = _font(rng.randint(SIZE // 10, SIZE // 6))
                text = "".join(rng.choice("abcdefghkmnpqrstuvwxyz") for _ in range(rng.randint(3, 6)))
                x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
                w, h = x1 - x0, y1 - y0
                if w >= SIZE - 8:
                    continue
                x, y = rng.randint(4, SIZE - w - 4), rng.randint(4, SIZE - h - 4)
                box = (x - 2, y - 2, x + w + 2, y + h + 2)
                if any(not (box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3]) for t in taken):
                    continue
                taken.append(box)
                draw.text((x - x0, y - y0), text, fill=tuple(rng.randint(0, 60) for _ in range(3)), font=font)
                points = [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]
                boxes.append({"transcription": text, "points": points})
                break
        rel = f"{split}/img_{i:03d}.png"
        image.save(os.path.join(folder, rel))
        lines.append(rel + "\t" + json.dumps(boxes))
    with open(os.path.join(folder, f"{split}_label.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def make_rec_set(folder, split, count, rng):
    """Digit strings on 100x32 crops; label lines ``path\\ttext``; ``dict.txt`` one char a line."""
    from PIL import Image, ImageDraw

    os.makedirs(os.path.join(folder, split), exist_ok=True)
    lines = []
    for i in range(count):
        text = "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 4)))
        font = _font(rng.randint(20, 24))
        image = Image.new("RGB", (100, 32), tuple(rng.randint(190, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        draw.text((4 - x0 + rng.randint(0, 3), (32 - (y1 - y0)) // 2 - y0), text,
                  fill=tuple(rng.randint(0, 70) for _ in range(3)), font=font)
        rel = f"{split}/word_{i:03d}.png"
        image.save(os.path.join(folder, rel))
        lines.append(rel + "\t" + text)
    with open(os.path.join(folder, f"{split}_label.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "dict.txt"), "w") as f:
        f.write("\n".join(DIGITS) + "\n")


def _loader(batch_size, shuffle, drop_last=False):
    return {"shuffle": shuffle, "drop_last": drop_last, "batch_size_per_card": batch_size, "num_workers": 0,
            "use_shared_memory": False}


def _global(save_dir, **extra):
    return {"use_gpu": False, "epoch_num": 1, "log_smooth_window": 10, "print_batch_step": 4,
            "save_model_dir": save_dir, "save_epoch_step": 1000, "eval_batch_step": [0, 100000],
            "cal_metric_during_train": False, "pretrained_model": None, "checkpoints": None,
            "save_inference_dir": None, "use_visualdl": False, "seed": 1024, **extra}


def det_config(data):
    normalize = {"NormalizeImage": {"scale": "1./255.", "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225], "order": "hwc"}}
    return {
        "Global": _global("./det_out"),
        "Architecture": {"model_type": "det", "algorithm": "DB", "Transform": None,
                         "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "small"},
                         "Neck": {"name": "DBFPN", "out_channels": 64}, "Head": {"name": "DBHead", "k": 50}},
        "Loss": {"name": "DBLoss", "balance_loss": True, "main_loss_type": "DiceLoss", "alpha": 5, "beta": 10,
                 "ohem_ratio": 3},
        "Optimizer": {"name": "Adam", "beta1": 0.9, "beta2": 0.999, "lr": {"learning_rate": 0.004},
                      "regularizer": {"name": "L2", "factor": 0}},
        "PostProcess": {"name": "DBPostProcess", "thresh": 0.3, "box_thresh": 0.5, "max_candidates": 100,
                        "unclip_ratio": 1.5},
        "Metric": {"name": "DetMetric", "main_indicator": "hmean"},
        "Train": {"dataset": {"name": "SimpleDataSet", "data_dir": data, "ratio_list": [1.0],
                              "label_file_list": [os.path.join(data, "train_label.txt")],
                              "transforms": [
                                  {"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
                                  {"DetLabelEncode": None},
                                  {"EastRandomCropData": {"size": [SIZE, SIZE], "max_tries": 10, "keep_ratio": True}},
                                  {"MakeBorderMap": {"shrink_ratio": 0.4, "thresh_min": 0.3, "thresh_max": 0.7}},
                                  {"MakeShrinkMap": {"shrink_ratio": 0.4, "min_text_size": 8}},
                                  normalize, {"ToCHWImage": None},
                                  {"KeepKeys": {"keep_keys": ["image", "threshold_map", "threshold_mask",
                                                              "shrink_map", "shrink_mask"]}}]},
                  "loader": _loader(4, True)},
        "Eval": {"dataset": {"name": "SimpleDataSet", "data_dir": data,
                             "label_file_list": [os.path.join(data, "test_label.txt")],
                             "transforms": [
                                 {"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
                                 {"DetLabelEncode": None},
                                 {"DetResizeForTest": {"image_shape": [SIZE, SIZE]}},
                                 normalize, {"ToCHWImage": None},
                                 {"KeepKeys": {"keep_keys": ["image", "shape", "polys", "ignore_tags"]}}]},
                 "loader": _loader(1, False)},
    }


def _rec_config(data, out, architecture, loss, transforms, lr, batch, plugins, **extra_global):
    """A recognizer on the generated word images: what CRNN and SVTR-LCNet configs share."""
    config = {
        "Global": _global(out, character_dict_path=os.path.join(data, "dict.txt"), max_text_length=10,
                          use_space_char=False, **extra_global),
        "Architecture": dict({"model_type": "rec", "Transform": None}, **architecture),
        "Loss": loss,
        "Optimizer": {"name": "Adam", "beta1": 0.9, "beta2": 0.999, "lr": {"learning_rate": lr},
                      "regularizer": {"name": "L2", "factor": 0}},
        "PostProcess": {"name": "CTCLabelDecode"},
        "Metric": {"name": "RecMetric", "main_indicator": "acc"},
    }
    for mode, labels, shuffle in (("Train", "train_label.txt", True), ("Eval", "test_label.txt", False)):
        config[mode] = {"dataset": {"name": "SimpleDataSet", "data_dir": data,
                                    "label_file_list": [os.path.join(data, labels)], "transforms": transforms},
                        "loader": _loader(batch, shuffle, drop_last=shuffle)}
    if plugins is not None:
        config["plugins"] = plugins
    return config


def rec_config(data, plugins=None):
    transforms = [{"DecodeImage": {"img_mode": "BGR", "channel_first": False}}, {"CTCLabelEncode": None},
                  {"RecResizeImg": {"image_shape": [3, 32, 100]}},
                  {"KeepKeys": {"keep_keys": ["image", "label", "length"]}}]
    architecture = {"algorithm": "CRNN", "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "small"},
                    "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 48},
                    "Head": {"name": "CTCHead", "fc_decay": 0.0}}
    return _rec_config(data, "./rec_out", architecture, {"name": "CTCLoss"}, transforms, 0.005, 16, plugins,
                       cal_metric_during_train=True)


def svtr_config(data, plugins=None):
    """A tiny SVTR-LCNet (PP-OCRv3 rec): MobileNetV1Enhance x0.5, MultiHead [CTC with an SVTR neck,
    SAR], MultiLoss. 48 pixels high: export's InputSpec for SVTR_LCNet fixes the height."""
    transforms = [{"DecodeImage": {"img_mode": "BGR", "channel_first": False}}, {"MultiLabelEncode": None},
                  {"RecResizeImg": {"image_shape": list(SVTR_SHAPE)}},
                  {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_sar", "length", "valid_ratio"]}}]
    architecture = {"algorithm": "SVTR_LCNet",
                    "Backbone": {"name": "MobileNetV1Enhance", "scale": 0.5, "last_conv_stride": [1, 2],
                                 "last_pool_type": "avg"},
                    "Head": {"name": "MultiHead", "head_list": [
                        {"CTCHead": {"Neck": {"name": "svtr", "dims": 32, "depth": 1, "hidden_dims": 64,
                                              "use_guide": True},
                                     "Head": {"fc_decay": 0.00001}}},
                        {"SARHead": {"enc_dim": 64, "max_text_length": 10, "d_k": 64}}]}}
    loss = {"name": "MultiLoss", "loss_config_list": [{"CTCLoss": None}, {"SARLoss": None}]}
    return _rec_config(data, "./svtr_out", architecture, loss, transforms, 0.002, 8, plugins)


# ------------------------------------------------------------------ running the tools
def tool(name):
    return os.path.join(ROOT, "tools", name)


def run_tool(name, config, opts, cwd, extra=(), expect_rc=0):
    """``python tools/NAME -c CONFIG -o OPTS... EXTRA...`` in a fresh process, niced."""
    args = [tool(name), "-c", config] + (["-o"] + list(opts) if opts else []) + list(extra)
    if expect_rc == 0:
        return run_python(args, cwd=cwd)
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=600)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def logged_metric(proc, name):
    """The last ``name:value`` that tools/eval.py logged."""
    found = re.findall(rf"\b{name}:\s*([0-9.eE+-]+)", proc.stdout + proc.stderr)
    assert found, f"no {name} in the eval log:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return float(found[-1])


def report_of(folder):
    with open(os.path.join(folder, "prune_report.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ppocr")
    rng = random.Random(0)
    make_det_set(str(folder / "det"), "train", 16, rng)
    make_det_set(str(folder / "det"), "test", 8, rng)
    make_rec_set(str(folder / "rec"), "train", 64, rng)
    make_rec_set(str(folder / "rec"), "test", 32, rng)
    with open(folder / "det.yml", "w") as f:
        yaml.safe_dump(det_config(str(folder / "det")), f, sort_keys=False)
    return folder


@pytest.fixture(scope="module")
def det_base(work):
    """A DB detector trained without the plugin (144 steps: hmean about 1 on this set)."""
    run_tool("train.py", "det.yml", ["Global.epoch_num=36", "Global.save_model_dir=./det_base"], cwd=str(work))
    return work / "det_base" / "latest"


@pytest.fixture(scope="module")
def det_pruned(work, det_base):
    """Sensitivity analysis (hmean, first 6 eval batches), ratios by loss budget, 4 epochs fine-tuning
    (16 steps) and one evaluation at its end, which PaddleOCR saves as best_accuracy."""
    proc = run_tool("train.py", "det.yml",
                    ["Global.epoch_num=4", "Global.save_model_dir=./det_pruned", f"Global.pretrained_model={det_base}",
                     "Optimizer.lr.learning_rate=0.002", "Global.eval_batch_step=[0,16]"],
                    cwd=str(work),
                    extra=["--plugin", "prune", "--prune.eval_metric_loss", "0.05", "--prune.sen_ratios", "0.1,0.3",
                           "--prune.sen_batches", "6", "--prune.skip", "head.*"])
    return work / "det_pruned", proc


# ------------------------------------------------------------------ detection (DB)
def test_db_sensitivities_use_hmean_and_the_plan_lowers_flops(det_pruned):
    out, proc = det_pruned
    with open(out / "sensitivities.json") as f:
        sens = json.load(f)
    assert sens["metric"]["name"] == "hmean" and sens["metric"]["max_batches"] == 6
    assert sens["metric"]["baseline"] > 0
    analysed = {g: v["ratios"] for g, v in sens["groups"].items() if v.get("ratios")}
    assert len(analysed) > 10
    for ratios in analysed.values():
        assert set(ratios) <= {"0.1", "0.3"}
        assert all(0 <= r["metric"] <= 1 and "loss" in r for r in ratios.values())

    report = report_of(out)
    assert report["metric_name"] == "hmean"
    assert report["after"]["flops"] < report["before"]["flops"]
    assert report["after"]["params"] < report["before"]["params"]
    # found by the graph and the inventory, not by name: only the two one-channel DB outputs
    # (conv-transposes) are skipped; the FPN outputs feeding concat are groups; the threshold
    # branch runs only in training, where it is traced: a group marked conditional
    rows = {row["weight"]: row for row in report["convs"]}
    assert {w for w, row in rows.items() if row["status"] == "skipped"} == {
        "head.binarize.conv3.weight", "head.thresh.conv3.weight"}
    assert all(rows[f"neck.p{i}_conv.weight"]["status"] == "prunable" for i in range(2, 6))
    assert rows["head.thresh.conv1.weight"]["status"] == "prunable"
    assert "conditional" in rows["head.thresh.conv1.weight"]["reason"]
    assert rows["head.binarize.conv2.weight"]["status"] == "prunable"  # a conv-transpose as producer
    assert rows["head.binarize.conv3.weight"]["reason"] == "has a single output channel"
    prunable_share = sum(row["flops_share"] for row in report["convs"] if row["status"] != "skipped")
    assert prunable_share > 0.95  # PaddleSlim could reach 55% of DB-MobileNetV3's FLOPs
    assert "pruned" in proc.stderr and "after training: hmean" in proc.stderr
    # the final line names the checkpoint PaddleOCR keeps as best, with the hmean it logged for it
    logged = float(re.findall(r"best metric, hmean: ([0-9.]+)", proc.stdout + proc.stderr)[-1])
    best = report["after_training"]["best_checkpoint"]
    assert os.path.abspath(os.path.join(out.parent, best["path"])) == str(out / "best_accuracy")
    assert best["metric"] == pytest.approx(logged, abs=1e-9)
    assert f"the best checkpoint {best['path']}: hmean {logged:.4f}" in proc.stderr

    import paddle

    saved = paddle.load(str(out / "latest.pdparams"))
    assert not any(k.endswith("_backup") for k in saved)
    plan = json.load(open(out / "latest.prune.json"))
    for name, shape in plan["shapes"].items():
        assert list(saved[name].shape) == shape


def test_metric_scores_the_same_batches_every_time(work, det_base):
    """Even with a shuffling Eval loader, the first 2 batches are the same 2 every time."""
    proc = run_python([os.path.join(SCRIPTS, "metric_twice.py"), "2", tool("train.py"), "-c", "det.yml", "-o",
                       f"Global.pretrained_model={det_base}", "Eval.loader.shuffle=True"], cwd=str(work))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["name"] == "hmean" and result["all"][0] > 0
    assert result["limited"][0] == result["limited"][1] and result["all"][0] == result["all"][1]


def test_analyze_never_builds_the_train_loader(work, det_base):
    """`--prune.action analyze` ends the run before training: tools/train.py's Train loader is not
    built (its dataset would read every label file), so a label file that is not there does not
    stop the analysis; the same config stops a training at once."""
    broken = ["Train.dataset.label_file_list=['./no_such_label_file.txt']", "Train.loader.num_workers=2"]
    proc = run_tool("train.py", "det.yml", broken + [f"Global.pretrained_model={det_base}",
                                                     "Global.save_model_dir=./det_analyze_only"],
                    cwd=str(work), extra=["--plugin", "prune", "--prune.action", "analyze", "--prune.sen_ratios", "0.3",
                                          "--prune.sen_batches", "1", "--prune.skip", "backbone.*"])
    assert "prune.action=analyze ends the run before training: the Train loader is not built" in proc.stderr
    with open(work / "det_analyze_only" / "sensitivities.json") as f:
        assert json.load(f)["groups"], proc.stderr[-3000:]
    failed = run_tool("train.py", "det.yml", broken + ["Global.save_model_dir=./det_no_labels"], cwd=str(work),
                      expect_rc=None)
    assert failed.returncode != 0 and "no_such_label_file" in failed.stdout + failed.stderr, failed.stderr[-2000:]


def test_sensitivity_workers_finish_and_equal_one_process(work, det_base):
    records = []
    for workers in (1, 2):
        run_tool("train.py", "det.yml",
                 [f"Global.pretrained_model={det_base}", f"Global.save_model_dir=./det_w{workers}"],
                 cwd=str(work), extra=["--plugin", "prune", "--prune.action", "analyze", "--prune.sen_ratios", "0.3",
                                       "--prune.sen_batches", "2", "--prune.skip", "head.*",
                                       "--prune.sen_workers", str(workers)])
        with open(work / f"det_w{workers}" / "sensitivities.json") as f:
            data = json.load(f)
        records.append({g: {r: e["metric"] for r, e in v["ratios"].items()} for g, v in data["groups"].items()})
    assert records[0] and records[0] == records[1]


def test_db_eval_in_a_fresh_process_equals_the_end_of_training(work, det_pruned):
    out, _ = det_pruned
    proc = run_tool("eval.py", "det.yml", [f"Global.checkpoints={out / 'latest'}"], cwd=str(work))
    assert "rebuilt pruned shapes" in proc.stderr
    assert "not matched" not in proc.stdout + proc.stderr
    assert logged_metric(proc, "hmean") == pytest.approx(report_of(out)["after_training"]["metric"], abs=1e-6)


def test_db_export_runs_with_the_pruned_shapes(work, det_pruned):
    import paddle

    out, _ = det_pruned
    infer = work / "det_pruned_infer"
    run_tool("export_model.py", "det.yml",
             [f"Global.checkpoints={out / 'latest'}", f"Global.save_inference_dir={infer}"] + EXPORT_OPTS,
             cwd=str(work))
    layer = paddle.jit.load(str(infer / "inference"))
    layer.eval()
    maps = layer(paddle.to_tensor(np.random.RandomState(0).rand(1, 3, SIZE, SIZE).astype("float32")))
    maps = maps[0] if isinstance(maps, (list, tuple)) else maps
    assert list(maps.shape) == [1, 1, SIZE, SIZE]
    exported = sorted(tuple(p.shape) for p in layer.parameters())
    plan = json.load(open(out / "latest.prune.json"))
    for shape in plan["shapes"].values():
        assert tuple(shape) in exported


def test_a_checkpoint_whose_shapes_differ_is_refused(work, det_base, tmp_path):
    """PaddleOCR itself only warns and evaluates random weights; the adapter stops with the tensor."""
    import paddle

    weights = paddle.load(str(det_base) + ".pdparams")
    name = next(k for k, v in weights.items() if len(v.shape) == 4 and v.shape[0] > 1)
    weights[name] = weights[name][: weights[name].shape[0] // 2]
    paddle.save(weights, str(tmp_path / "cut.pdparams"))
    proc = run_tool("eval.py", "det.yml", [f"Global.checkpoints={tmp_path / 'cut'}"], cwd=str(work), expect_rc=2)
    assert "slim-plugins: error" in proc.stderr and name in proc.stderr and "Traceback" not in proc.stderr
    assert f"there is no pruning plan {tmp_path / 'cut.prune.json'}" in proc.stderr


def test_unpruned_db_eval_and_export_work_with_the_adapter_installed(work, det_base):
    proc = run_tool("eval.py", "det.yml", [f"Global.checkpoints={det_base}"], cwd=str(work))
    assert logged_metric(proc, "hmean") >= 0
    assert "slim-plugins" not in proc.stderr
    run_tool("export_model.py", "det.yml",
             [f"Global.checkpoints={det_base}", f"Global.save_inference_dir={work / 'det_base_infer'}"] + EXPORT_OPTS,
             cwd=str(work))
    assert any(n.startswith("inference.") for n in os.listdir(work / "det_base_infer"))
    if compat.PADDLE_3:  # PaddleOCR's default (old-IR) export cannot build DB on Paddle 3: say how to export
        old_ir = [f"Global.checkpoints={det_base}", f"Global.save_inference_dir={work / 'det_base_old_ir'}"]
        proc = run_tool("export_model.py", "det.yml", old_ir, cwd=str(work), expect_rc=None)
        # no plugin on and nothing pruned: slim-plugins patched no export, PaddleOCR fails its own way
        assert proc.returncode not in (0, 2) and "slim-plugins" not in proc.stderr
        proc = run_tool("export_model.py", "det.yml", old_ir, cwd=str(work), extra=["--plugin", "prune"],
                        expect_rc=2)
        assert "Traceback" not in proc.stderr
        ours = [line for line in proc.stderr.splitlines() if line.startswith("slim-plugins: error:")]
        assert len(ours) == 1 and "cannot do for this model, pruned or not" in ours[0]
        assert "Global.export_with_pir=True" in proc.stderr


def test_replay_eval_export_of_a_plan_made_without_paddleslim(work, det_base):
    """Plan replay needs no tracing: a plan made by hand (with the plan format only) is rebuilt
    before the weights load, and the export carries the pruned shapes."""
    import paddle

    made = run_python([os.path.join(SCRIPTS, "ppocr_handmade_plan.py"), ROOT, "det.yml", str(det_base),
                       str(work / "hand" / "cut"), "12"], cwd=str(work))
    shapes = json.loads(made.stdout.strip().splitlines()[-1])
    assert [12, 64, 3, 3] in shapes.values()
    proc = run_tool("eval.py", "det.yml", [f"Global.checkpoints={work / 'hand' / 'cut'}"], cwd=str(work))
    assert "rebuilt pruned shapes" in proc.stderr and "not matched" not in proc.stdout + proc.stderr
    assert 0 <= logged_metric(proc, "hmean") <= 1
    infer = work / "hand_infer"
    run_tool("export_model.py", "det.yml",
             [f"Global.checkpoints={work / 'hand' / 'cut'}", f"Global.save_inference_dir={infer}"] + EXPORT_OPTS,
             cwd=str(work))
    layer = paddle.jit.load(str(infer / "inference"))
    layer.eval()
    maps = layer(paddle.to_tensor(np.zeros([1, 3, SIZE, SIZE], dtype="float32")))
    maps = maps[0] if isinstance(maps, (list, tuple)) else maps
    assert list(maps.shape) == [1, 1, SIZE, SIZE]
    exported = [tuple(p.shape) for p in layer.parameters()]
    assert (12, 64, 3, 3) in exported and (64, 64, 3, 3) not in exported


# ------------------------------------------------------------------ recognition (CRNN/CTC), YAML section
@pytest.fixture(scope="module")
def rec_pruned(work):
    """Switched on by the config's plugins: section alone; -o overrides one of its keys."""
    plugins = {"prune": {"ratios": {"backbone.blocks.1.*": 0.5, "backbone.blocks.3.*": 0.3, "backbone.conv2.*": 0.5},
                         "criterion": "l1_norm"}}
    with open(work / "rec.yml", "w") as f:
        yaml.safe_dump(rec_config(str(work / "rec"), plugins), f, sort_keys=False)
    hooks = work / "rec_train_hooks.json"
    run_python([os.path.join(SCRIPTS, "ppocr_tool.py"), str(hooks), tool("train.py"), "-c", "rec.yml", "-o",
                "Global.epoch_num=3", "Global.save_model_dir=./rec_pruned", "plugins.prune.criterion=l2_norm"],
               cwd=str(work))
    return work / "rec_pruned", json.load(open(hooks))


def test_rec_yaml_section_with_override_prunes_before_training(rec_pruned):
    out, hooks = rec_pruned
    report = report_of(out)
    assert report["criterion"] == "l2_norm"  # the -o override beat the YAML's l1_norm
    assert report["ratios"]
    assert all(g.startswith(("backbone.blocks.1.", "backbone.blocks.3.", "backbone.conv2.")) for g in report["ratios"])
    assert report["after"]["flops"] < report["before"]["flops"]
    # the last conv feeds Im2Seq and the bidirectional LSTM: pruned with the input columns of the
    # LSTM's first layer, both directions; nothing is skipped
    assert report["channels"]["backbone.conv2.conv.weight"] == [288, 144]
    plan = json.load(open(out / "latest.prune.json"))
    lstm = "neck.encoder.lstm."
    assert {n: s for n, s in plan["shapes"].items() if n.startswith(lstm)} == {
        lstm + "weight_ih_l0": [192, 144], lstm + "weight_ih_l0_reverse": [192, 144]}
    assert plan["layer_attrs"]["neck.encoder.lstm"]["input_size"] == 144
    assert not [row for row in report["convs"] if row["status"] == "skipped"]
    assert hooks[0] == "slim_before_train" and hooks[-2:] == ["slim_after_train", "slim_on_run_end"]
    assert hooks.count("slim_on_checkpoint_save") == 3  # `latest` after each epoch
    import paddle

    # Adam's moments were built on (and stepped with) the pruned LSTM input weights
    moments = [v for k, v in paddle.load(str(out / "latest.pdopt")).items() if "moment1" in k]
    assert sum(list(m.shape) == [192, 144] and float(m.abs().sum()) > 0 for m in moments) == 2


def test_rec_eval_and_export_of_the_pruned_checkpoint(work, rec_pruned):
    import paddle

    out, _ = rec_pruned
    report = report_of(out)
    proc = run_tool("eval.py", "rec.yml", [f"Global.checkpoints={out / 'latest'}"], cwd=str(work))
    assert "rebuilt pruned shapes" in proc.stderr
    assert logged_metric(proc, "acc") == pytest.approx(report["after_training"]["metric"], abs=1e-6)

    hooks = work / "rec_export_hooks.json"
    infer = work / "rec_infer"
    run_python([os.path.join(SCRIPTS, "ppocr_tool.py"), str(hooks), tool("export_model.py"), "-c", "rec.yml", "-o",
                f"Global.checkpoints={out / 'latest'}", f"Global.save_inference_dir={infer}"] + EXPORT_OPTS,
               cwd=str(work))
    assert json.load(open(hooks)) == ["slim_before_load_weights", "slim_after_load_weights", "slim_before_export"]
    layer = paddle.jit.load(str(infer / "inference"))
    layer.eval()
    probs = layer(paddle.to_tensor(np.random.RandomState(0).rand(2, 3, 32, 100).astype("float32")))
    probs = probs[0] if isinstance(probs, (list, tuple)) else probs
    assert list(probs.shape) == [2, 25, len(DIGITS) + 1]
    exported = sorted(tuple(p.shape) for p in layer.parameters())
    plan = json.load(open(out / "latest.prune.json"))
    for shape in plan["shapes"].values():
        assert tuple(shape) in exported
    image = np.random.RandomState(0).rand(2, 3, 32, 100).astype("float32")
    probs = layer(paddle.to_tensor(image))  # Paddle Inference runs the exported program the same
    probs = probs[0] if isinstance(probs, (list, tuple)) else probs
    np.testing.assert_allclose(run_inference(infer, image), probs.numpy(), atol=1e-5)


# ------------------------------------------------------------------ SVTR-LCNet (PP-OCRv3 rec), --plugin prune
SVTR_RATIOS = "backbone.block_list.1.*=0.5,backbone.block_list.1?._pointwise_conv.*=0.25"
SVTR_GROUPS = {  # the groups those globs select: ratio, channels before and after
    "backbone.block_list.1._pointwise_conv._conv.weight": (0.5, 64, 32),
    "backbone.block_list.10._pointwise_conv._conv.weight": (0.25, 256, 192),
    "backbone.block_list.11._pointwise_conv._conv.weight": (0.25, 512, 384),
    "backbone.block_list.12._pointwise_conv._conv.weight": (0.25, 512, 384)}  # read by both heads


@pytest.fixture(scope="module")
def svtr_pruned(work):
    """A mechanics run (2 training steps: acc stays 0, so the metric is norm_edit_dis): MultiHead's
    training forward needs the labels, so the adapter traces it in train mode with dummy labels,
    and the graph sees what the SAR head reads."""
    make_rec_set(str(work / "svtr"), "train", 16, random.Random(1))
    make_rec_set(str(work / "svtr"), "test", 8, random.Random(2))
    config = svtr_config(str(work / "svtr"))
    config["Metric"]["main_indicator"] = "norm_edit_dis"
    with open(work / "svtr.yml", "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    proc = run_tool("train.py", "svtr.yml", ["Global.save_model_dir=./svtr_pruned"], cwd=str(work),
                    extra=["--plugin", "prune", "--prune.ratios", SVTR_RATIOS])
    return work / "svtr_pruned", proc


def test_svtr_lcnet_prunes_backbone_groups_before_training(svtr_pruned):
    import paddle

    out, proc = svtr_pruned
    report = report_of(out)
    assert report["ratios"] == {g: ratio for g, (ratio, _, _) in SVTR_GROUPS.items()}
    assert report["channels"] == {g: [before, after] for g, (_, before, after) in SVTR_GROUPS.items()}
    assert report["after"]["flops"] < report["before"]["flops"]
    assert report["after"]["params"] < report["before"]["params"]
    # both heads trained on the pruned backbone
    assert re.search(r"global_step: 2\b.*CTCLoss: [0-9.]+, SARLoss: [0-9.]+", proc.stdout), proc.stdout[-2000:]

    saved = paddle.load(str(out / "latest.pdparams"))
    assert not any(k.endswith("_backup") for k in saved)
    plan = json.load(open(out / "latest.prune.json"))
    assert set(plan["ratios"]) == set(SVTR_GROUPS)
    # the last backbone conv's readers lose its pruned channels: the SVTR neck's first conv (and
    # its shortcut into conv4), the SAR encoder's LSTM (first layer's input columns), the SAR
    # decoder's conv and the prediction rows of the attended features
    head = {n[len("head."):] for n in plan["shapes"] if not n.startswith("backbone.")}
    assert head == {"ctc_encoder.encoder.conv1.conv.weight", "ctc_encoder.encoder.conv4.conv.weight",
                    "sar_head.encoder.rnn_encoder.weight_ih_l0", "sar_head.decoder.conv3x3_1.weight",
                    "sar_head.decoder.prediction.weight"}, head
    assert plan["shapes"]["head.sar_head.encoder.rnn_encoder.weight_ih_l0"][1] == 384
    assert plan["layer_attrs"]["head.sar_head.encoder.rnn_encoder"]["input_size"] == 384
    for name, shape in plan["shapes"].items():
        assert list(saved[name].shape) == shape, name
    for group, (_, _, after) in SVTR_GROUPS.items():
        assert saved[group].shape[0] == after
    # the optimizer was built on (and stepped with) the pruned parameters: pruned before training
    moments = [v for k, v in paddle.load(str(out / "latest.pdopt")).items() if "moment1" in k]
    assert sorted(m.shape for m in moments if len(m.shape) == 4) == \
        sorted(v.shape for v in saved.values() if len(v.shape) == 4)
    for group in SVTR_GROUPS:
        assert any(m.shape == saved[group].shape and float(m.abs().sum()) > 0 for m in moments), group


def test_svtr_lcnet_log_says_which_convs_were_skipped_and_why(svtr_pruned):
    out, proc = svtr_pruned
    skipped = dict(re.findall(r"\[slim-plugins prune\] skip (\S+): (.+)", proc.stderr))
    neck = "head.ctc_encoder.encoder."
    # the last backbone conv feeds the SAR head's LSTM (seen because the trace runs in train mode):
    # pruned with the LSTM's input weights
    assert "backbone.block_list.12._pointwise_conv._conv.weight" not in skipped
    # in training MultiHead returns the neck's output (ctc_neck) next to the heads' outputs
    assert "model output" in skipped[neck + "conv1x1.conv.weight"]
    rows = {row["weight"]: row for row in report_of(out)["convs"]}
    assert {w for w, row in rows.items() if row["status"] == "skipped"} == set(skipped)
    # the neck's other convs are groups of their own, left alone by the backbone globs: conv2's
    # channels are the SVTR block's tokens (layer_norm, FC rows), conv3's are concatenated with
    # the shortcut; the SAR head's conv is traced in train mode
    for conv in ("conv1", "conv2", "conv3", "conv4"):
        assert rows[neck + conv + ".conv.weight"]["status"] == "prunable", conv
    assert rows["head.sar_head.decoder.conv3x3_1.weight"]["status"] == "prunable"
    assert not any(name.startswith("head.") for name in report_of(out)["ratios"])


def test_svtr_lcnet_eval_in_a_fresh_process_rebuilds_the_pruned_shapes(work, svtr_pruned):
    out, _ = svtr_pruned
    proc = run_tool("eval.py", "svtr.yml", [f"Global.checkpoints={out / 'latest'}"], cwd=str(work))
    assert "rebuilt pruned shapes" in proc.stderr
    assert "not matched" not in proc.stdout + proc.stderr
    assert logged_metric(proc, "norm_edit_dis") == pytest.approx(report_of(out)["after_training"]["metric"],
                                                                 abs=1e-6)


def test_svtr_lcnet_export_carries_the_pruned_weights(work, svtr_pruned):
    import paddle

    out, _ = svtr_pruned
    infer = work / "svtr_infer"
    proc = run_tool("export_model.py", "svtr.yml",
                    [f"Global.checkpoints={out / 'latest'}", f"Global.save_inference_dir={infer}"] + EXPORT_OPTS,
                    cwd=str(work))
    assert "rebuilt pruned shapes" in proc.stderr
    layer = paddle.jit.load(str(infer / "inference"))
    layer.eval()
    probs = layer(paddle.to_tensor(np.random.RandomState(0).rand(2, *SVTR_SHAPE).astype("float32")))
    probs = probs[0] if isinstance(probs, (list, tuple)) else probs
    assert list(probs.shape) == [2, SVTR_SHAPE[2] // 8, len(DIGITS) + 1]
    exported = [p.numpy() for p in layer.parameters()]
    saved = {k: v.numpy() for k, v in paddle.load(str(out / "latest.pdparams")).items()}
    # every conv of the inference program (the SAR head is not in it) has the checkpoint's shape ...
    assert sorted(p.shape for p in exported if p.ndim == 4) == \
        sorted(v.shape for k, v in saved.items() if v.ndim == 4 and not k.startswith("head.sar_head."))
    # ... and every tensor the plan changed carries the trained weights
    plan = json.load(open(out / "latest.prune.json"))
    for name in plan["shapes"]:
        if not name.startswith("head.sar_head."):
            assert any(p.shape == saved[name].shape and np.array_equal(p, saved[name]) for p in exported), name


def test_db_every_group_at_0_9_evaluates_and_exports_in_fresh_processes(work, det_base):
    """The reported case: DB-MobileNetV3 at 0.9 trained, then tools/eval.py and the export failed
    ("input's channels is 1 ... the groups is 8"): depthwise convs left with one channel per group
    must be in the plan (groups 1 included)."""
    import paddle

    out = work / "det_090"
    proc = run_tool("train.py", "det.yml", ["Global.epoch_num=1", f"Global.save_model_dir=./{out.name}",
                                            f"Global.pretrained_model={det_base}"],
                    cwd=str(work), extra=["--plugin", "prune", "--prune.ratios", "*=0.9", "--prune.plot", "false"])
    assert "pruned" in proc.stderr
    plan = json.load(open(out / "latest.prune.json"))
    assert any(groups == 1 for groups in plan["layer_groups"].values()), plan["layer_groups"]
    evaluated = run_tool("eval.py", "det.yml", [f"Global.checkpoints={out / 'latest'}"], cwd=str(work))
    assert "rebuilt pruned shapes" in evaluated.stderr
    assert logged_metric(evaluated, "hmean") == pytest.approx(report_of(out)["after_training"]["metric"], abs=1e-6)
    infer = work / "det_090_infer"
    run_tool("export_model.py", "det.yml",
             [f"Global.checkpoints={out / 'latest'}", f"Global.save_inference_dir={infer}"] + EXPORT_OPTS,
             cwd=str(work))
    layer = paddle.jit.load(str(infer / "inference"))
    layer.eval()
    maps = layer(paddle.to_tensor(np.zeros((1, 3, SIZE, SIZE), dtype="float32")))
    maps = maps[0] if isinstance(maps, (list, tuple)) else maps
    assert list(maps.shape) == [1, 1, SIZE, SIZE]


# ------------------------------------------------------------------ PP-OCRv3 and PP-OCRv4 mobile det and rec (issue 11)
MOBILE_REC_SHAPE = (3, 48, 320)  # C, H, W: both rec configs' own Eval size

# the Architecture sections of PaddleOCR's public configs: tests/ppocr_archs.py (MOBILE_DET, MOBILE_REC)


def mobile_det_config(data, version):
    """A PP-OCR mobile detector (``ppocr_archs.MOBILE_DET``) on the generated 160-pixel set (its Eval resize
    made small)."""
    config = det_config(data)
    config["Global"]["save_model_dir"] = f"./{version}_det_out"
    config["Architecture"] = mobile_det_arch(version)
    config["Optimizer"]["lr"]["learning_rate"] = 0.001
    config["PostProcess"]["box_thresh"] = 0.6
    config["Train"]["dataset"]["ratio_list"] = [0.5]  # 8 of the 16 training images: 2 steps
    return config


def mobile_rec_config(data, version, plugins=None):
    """A PP-OCR mobile recogniser (``MOBILE_REC``) at its own 48x320, trained on a SimpleDataSet
    (not its multi-scale sampler)."""
    architecture, gtc, _ = MOBILE_REC[version]
    transforms = [{"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
                  {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"} if gtc == "NRTR" else None},
                  {"RecResizeImg": {"image_shape": list(MOBILE_REC_SHAPE)}},
                  {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_gtc" if gtc == "NRTR" else "label_sar",
                                              "length", "valid_ratio"]}}]
    loss = {"name": "MultiLoss", "loss_config_list": [{"CTCLoss": None}, {f"{gtc}Loss": None}]}
    config = _rec_config(data, f"./{version}_rec_out", architecture, loss, transforms, 0.001, 4, plugins)
    config["Metric"]["main_indicator"] = "norm_edit_dis"  # one epoch: acc stays 0
    return config


def run_inference(folder, image):
    """The exported model in Paddle Inference (CPU); returns its first output."""
    return paddle_inference(folder, "inference", image)[0]


def checkpoint_output(config_file, checkpoint, image):
    """The eval-mode output of ``checkpoint`` in this process: the model built as tools/train.py
    builds it, the plan replayed, the weights loaded. The export must compute the same (its
    re-parameterized convs fold the pruned branches)."""
    import paddle

    from slim_plugins.plugins.prune.plan import PrunePlan, replay

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from ppocr.modeling.architectures import build_model
    from ppocr.postprocess import build_post_process

    config = yaml.safe_load(open(config_file))
    arch = config["Architecture"]
    if arch["model_type"] == "rec":  # tools/train.py's out_channels_list: SAR adds 2 symbols, NRTR 3
        chars = len(build_post_process(config["PostProcess"], config["Global"]).character)
        gtc = list(config["Loss"]["loss_config_list"][1])[0][:-len("Loss")]
        arch["Head"]["out_channels_list"] = {"CTCLabelDecode": chars,
                                             f"{gtc}LabelDecode": chars + (2 if gtc == "SAR" else 3)}
    model = build_model(arch)
    replay(model, PrunePlan.load(str(checkpoint) + ".prune.json"))
    model.set_state_dict(paddle.load(str(checkpoint) + ".pdparams"))
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(image))
    return (out["maps"] if isinstance(out, dict) else out).numpy()


def exported_shapes(folder):
    import paddle

    layer = paddle.jit.load(str(folder / "inference"))
    return [tuple(p.shape) for p in layer.parameters()]


def fused_plan_shapes(plan, prefixes):
    """The plan's conv shapes the inference program holds: export re-parameterizes PPLCNetV3's
    LearnableRepLayer into one conv shaped like its first kxk branch (the 1x1 and other branches
    are folded into it)."""
    return {name: tuple(shape) for name, shape in plan["shapes"].items()
            if len(shape) == 4 and name.startswith(prefixes)
            and not re.search(r"\.conv_1x1\.|\.conv_kxk\.[1-9]", name)}


def train_eval_export(work, yml, metric, extra=()):
    """train.py (1 epoch, 2 steps), eval.py of `latest` in a fresh process, export_model.py; returns
    (output folder, report, plan, fresh metric, inference folder)."""
    config = yaml.safe_load(open(work / yml))
    out = work / config["Global"]["save_model_dir"]
    run_tool("train.py", yml, [], cwd=str(work), extra=list(extra))
    report, plan = report_of(out), json.load(open(out / "latest.prune.json"))
    proc = run_tool("eval.py", yml, [f"Global.checkpoints={out / 'latest'}"], cwd=str(work))
    assert "rebuilt pruned shapes" in proc.stderr and "not matched" not in proc.stdout + proc.stderr
    infer = out.with_name(out.name + "_infer")
    run_tool("export_model.py", yml,
             [f"Global.checkpoints={out / 'latest'}", f"Global.save_inference_dir={infer}"] + EXPORT_OPTS,
             cwd=str(work))
    return out, report, plan, logged_metric(proc, metric), infer


@pytest.mark.parametrize("version", ["v4", "v3"])
def test_mobile_det_trains_pruned_evaluates_the_same_and_exports(work, version):
    """PP-OCRv4 / v3 mobile det through train.py --plugin prune (every group at 0.3), a fresh
    eval.py equal to the end of training, export_model.py (which re-parameterizes PPLCNetV3's
    blocks into pruned convs) and Paddle Inference."""
    yml = f"{version}_det.yml"
    with open(work / yml, "w") as f:
        yaml.safe_dump(mobile_det_config(str(work / "det"), version), f, sort_keys=False)
    out, report, plan, hmean, infer = train_eval_export(
        work, yml, "hmean", ["--plugin", "prune", "--prune.ratios", "*=0.3", "--prune.plot", "false"])
    assert 1 - report["after"]["flops"] / report["before"]["flops"] > 0.3
    assert hmean == pytest.approx(report["after_training"]["metric"], abs=1e-6)
    if version == "v4":
        assert any(".lab." not in n and "conv_kxk" in n for n in plan["shapes"])  # PPLCNetV3 blocks pruned
    # only the one-channel DB outputs are skipped
    assert {r["weight"] for r in report["convs"] if r["status"] == "skipped"} == {
        "head.binarize.conv3.weight", "head.thresh.conv3.weight"}
    assert "neck.inp_conv.0.in_conv.weight" in plan["shapes"]  # convs feeding the FPN concat
    image = np.random.RandomState(0).rand(1, 3, SIZE, SIZE).astype("float32")
    maps = run_inference(infer, image)
    assert maps.shape == (1, 1, SIZE, SIZE) and np.isfinite(maps).all()
    # the folded convs agree with the branches to 1e-6 (relative) layer by layer; a barely trained
    # DB's maps are steep sigmoids (mostly 0 or 1), where that rounding can move a pixel or two
    reference = checkpoint_output(work / yml, out / "latest", image)
    differ = np.abs(maps - reference)
    assert differ.mean() < 1e-4 and (differ > 1e-3).mean() < 1e-3, (differ.mean(), differ.max())
    exported = exported_shapes(infer)
    expected = fused_plan_shapes(plan, ("backbone.", "neck.", "head."))
    assert expected and all(shape in exported for shape in expected.values()), expected


@pytest.mark.parametrize("version", ["v4", "v3"])
def test_mobile_rec_trains_pruned_evaluates_the_same_and_exports(work, version):
    """PP-OCRv4 / v3 mobile rec switched on by the config's plugins: section (every group at 0.3,
    the last backbone conv with the training-only head's input: NRTR's projection, SAR's LSTM),
    1 epoch, a fresh eval.py equal to the end of training, export_model.py (CTC branch only) and
    Paddle Inference."""
    data = work / "mobile_rec"
    if not (data / "test_label.txt").exists():
        make_rec_set(str(data), "train", 8, random.Random(3))  # 2 steps
        make_rec_set(str(data), "test", 4, random.Random(4))
    plugins = {"prune": {"ratios": {"*": 0.3}, "plot": False}}
    yml = f"{version}_rec.yml"
    with open(work / yml, "w") as f:
        yaml.safe_dump(mobile_rec_config(str(data), version, plugins), f, sort_keys=False)
    out, report, plan, ned, infer = train_eval_export(work, yml, "norm_edit_dis")
    assert 1 - report["after"]["flops"] / report["before"]["flops"] > 0.3
    assert ned == pytest.approx(report["after_training"]["metric"], abs=1e-6)
    # the training-only head lost the inputs of the last backbone conv's pruned channels
    assert MOBILE_REC[version][2] in plan["shapes"]
    assert any(n.startswith("head.ctc_encoder.") for n in plan["shapes"])  # the SVTR neck's convs
    image = np.random.RandomState(0).rand(2, *MOBILE_REC_SHAPE).astype("float32")
    probs = run_inference(infer, image)
    assert probs.shape == (2, MOBILE_REC_SHAPE[2] // 8, len(DIGITS) + 1) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs, checkpoint_output(work / yml, out / "latest", image), atol=1e-4)
    exported = exported_shapes(infer)
    expected = fused_plan_shapes(plan, ("backbone.", "head.ctc_encoder.", "head.ctc_head."))
    assert expected and all(shape in exported for shape in expected.values()), expected
