"""Models the paddledet wheel cannot prune end to end (RT-DETR, which it lacks; Faster R-CNN, whose
export fails with the wheel), pruned through a PaddleDetection source checkout's own
``tools/train.py``, ``eval.py`` and ``export_model.py``, then run in Paddle Inference (issue 11).

usage: python benchmarks/ppdet_checkout.py --ppdet-root PaddleDetection [--model rtdetr|faster_rcnn]
       [--config CONFIG] [--size PX] [--epochs N] [--ratios '*=0.3' | --ratios none]
       [--work DIR] [--json FILE]

The checkout is yours (``git clone https://github.com/PaddlePaddle/PaddleDetection``, outside this
repository), in a Python environment with Paddle, the checkout's ``requirements.txt`` imports and
slim-plugins installed (docs/ppdet.md, "Models the wheel lacks"). This script writes a small COCO
set of coloured rectangles and an overlay config whose ``_BASE_`` is the checkout's config (only the
data, the size, the readers, the batch and CPU settings are overridden: the model is the config's
own), and runs, each in a fresh process from the checkout's root, as a user does:

1. ``tools/train.py -c OVERLAY --plugin prune --prune.action show`` (timed),
2. ``tools/train.py -c OVERLAY --plugin prune --prune.ratios RATIOS`` (train with the pruned model;
   ``--ratios none``: plain ``tools/train.py``, the unpruned reference for steps 3 and 4),
3. ``tools/eval.py -c OVERLAY -o weights=<save_dir>/model_final`` (shapes rebuilt from the plan),
4. ``tools/export_model.py`` and a Paddle Inference predictor on the exported model (CPU).

Models (``--model``; ``--config`` takes another config of the same family):
``rtdetr`` (``configs/rtdetr/rtdetr_r18vd_6x_coco.yml``, 320 px, 2 epochs) and ``faster_rcnn``
(``configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.yml``, 256 px, 1 epoch).

It prints one row: groups, prunable FLOPs share, FLOPs cut, mAP at the end of training and in the
fresh eval, export and inference results (or the last line of their error), the wall time of each
step and the load average. No weights are downloaded (``pretrain_weights`` is cleared): the mAP of
a few epochs on 16 images is near zero; the row shows that the pruned shapes go through every
command.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = os.path.join(os.path.dirname(HERE), "tests", "scripts", "ppdet_shapes.py")
AP = re.compile(r"Average Precision\s+\(AP\) @\[ IoU=0\.50:0\.95 \| area=\s*all \| maxDets=100 \] = ([-\d.]+)")


NORM = "{mean: [0., 0., 0.], std: [1., 1., 1.], norm_type: none}"


def readers_rtdetr(size):
    """RT-DETR's readers: one batch size (``BatchRandomResize`` to ``size``), boxes normalised xywh."""
    resize = f"{{target_size: [{size}, {size}], keep_ratio: False, interp: 2}}"
    return f"""eval_size: [{size}, {size}]
TrainReader:
  batch_transforms:
    - BatchRandomResize: {{target_size: [{size}], random_size: True, random_interp: True, keep_ratio: False}}
    - NormalizeImage: {NORM}
    - NormalizeBox: {{}}
    - BboxXYXY2XYWH: {{}}
    - Permute: {{}}
  batch_size: 2
  use_shared_memory: false
EvalReader:
  sample_transforms: [Decode: {{}}, Resize: {resize}, NormalizeImage: {NORM}, Permute: {{}}]
  batch_size: 2
TestReader:
  inputs_def: {{image_shape: [3, {size}, {size}]}}
  sample_transforms: [Decode: {{}}, Resize: {resize}, NormalizeImage: {NORM}, Permute: {{}}]
  batch_size: 1
"""


def readers_rcnn(size):
    """Two-stage detectors' readers: per-image samples (``collate_batch: false``: boxes stay a list
    per image), padded to a stride of 32, pixel boxes."""
    resize = f"{{target_size: [{size}, {size}], keep_ratio: False, interp: 2}}"
    pad = "[PadBatch: {pad_to_stride: 32}]"
    return f"""TrainReader:
  sample_transforms: [Decode: {{}}, Resize: {resize}, RandomFlip: {{prob: 0.5}}, NormalizeImage: {NORM},
    Permute: {{}}]
  batch_transforms: {pad}
  batch_size: 2
  shuffle: true
  drop_last: true
  collate_batch: false
  use_shared_memory: false
EvalReader:
  sample_transforms: [Decode: {{}}, Resize: {resize}, NormalizeImage: {NORM}, Permute: {{}}]
  batch_transforms: {pad}
  batch_size: 1
TestReader:
  inputs_def: {{image_shape: [3, {size}, {size}]}}
  sample_transforms: [Decode: {{}}, Resize: {resize}, NormalizeImage: {NORM}, Permute: {{}}]
  batch_transforms: {pad}
  batch_size: 1
"""


# --model: the checkout's config, the readers for its family, the default size and epochs
MODELS = {
    "rtdetr": ("configs/rtdetr/rtdetr_r18vd_6x_coco.yml", readers_rtdetr, 320, 2),
    "faster_rcnn": ("configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.yml", readers_rcnn, 256, 1),
}


def overlay(base, data, save_dir, size, epochs, readers):
    """The checkout's config with this set, this size and CPU settings; the model sections as they are."""
    return f"""_BASE_: ['{base}']
use_gpu: false
norm_type: bn
num_classes: 3
worker_num: 0
log_iter: 5
epoch: {epochs}
snapshot_epoch: 100
save_dir: {save_dir}
pretrain_weights: ''
use_ema: false
TrainDataset: {{name: COCODataSet, dataset_dir: {data}, image_dir: train, anno_path: annotations/train.json,
  data_fields: ['image', 'gt_bbox', 'gt_class', 'is_crowd']}}
EvalDataset: {{name: COCODataSet, dataset_dir: {data}, image_dir: val, anno_path: annotations/val.json,
  allow_empty: true}}
TestDataset: {{name: ImageFolder, anno_path: annotations/val.json, dataset_dir: {data}}}
""" + readers(size)


TRACEBACK_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def failure(text, root):
    """``path:line: last error line`` for a failed command: the innermost traceback frame inside the
    checkout (relative to it), else the innermost frame."""
    frames = TRACEBACK_LINE.findall(text)
    inside = [(f, n) for f, n in frames if f.startswith(root + os.sep)]
    where = ""
    if inside or frames:
        path, line = (inside or frames)[-1]
        where = f"{os.path.relpath(path, root) if inside else path}:{line}: "
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)]
    return where + ((errors or lines or ["(no output)"])[-1])[:400]


def run(cmd, cwd, log, timeout, must=True):
    """One command in a fresh process; its output in ``log``. A hung loader (an exception in a data
    transform with ``worker_num: 0``) ends at ``timeout``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable] + cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, code = exc.stdout or "", (exc.stderr or "") + f"\nTimeoutError: over {timeout} s", -1
        out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    seconds = round(time.perf_counter() - start, 1)
    with open(log, "w") as f:
        f.write(out + "\n" + err)
    if code != 0 and must:
        sys.exit(f"{' '.join(cmd[:2])} failed (exit {code}); see {log}:\n{err[-3000:]}")
    return out, err, code, seconds


def infer(model_dir, size):
    """Outputs of the exported model in Paddle Inference on CPU, for one random image."""
    import numpy as np
    import paddle.inference as pi

    model = "model.json" if os.path.exists(os.path.join(model_dir, "model.json")) else "model.pdmodel"
    config = pi.Config(os.path.join(model_dir, model), os.path.join(model_dir, "model.pdiparams"))
    config.disable_gpu()
    if hasattr(config, "disable_mkldnn"):
        config.disable_mkldnn()
    predictor = pi.create_predictor(config)
    feeds = {"image": np.random.RandomState(0).rand(1, 3, size, size).astype("float32"),
             "im_shape": np.array([[size, size]], "float32"), "scale_factor": np.ones([1, 2], "float32")}
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(feeds[name])
    predictor.run()
    return [list(predictor.get_output_handle(n).copy_to_cpu().shape) for n in predictor.get_output_names()]


def find(folder, filename):
    """``folder/filename`` or ``folder/<config>/filename``: PaddleDetection's develop branch saves
    checkpoints in save_dir, its 2.6 release in save_dir/<config name>."""
    for dirpath, _, files in sorted(os.walk(folder)):
        if filename in files:
            return os.path.join(dirpath, filename)
    sys.exit(f"no {filename} under {folder}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--infer"]:  # step 4's predictor, in its own process (a crash there is a result)
        print(json.dumps(infer(argv[1], int(argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ppdet-root", required=True, help="a PaddleDetection source checkout")
    parser.add_argument("--model", choices=sorted(MODELS), default="rtdetr")
    parser.add_argument("--config", default=None, help="default: the --model's config in the checkout")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ratios", default="*=0.3", help="'none': train unpruned (the reference)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per command")
    parser.add_argument("--work", default=None, help="folder for the data, overlay and logs (default: temporary)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    config, readers, size, epochs = MODELS[args.model]
    config, size, epochs = args.config or config, args.size or size, args.epochs or epochs
    prune = args.ratios.lower() != "none"
    root = os.path.abspath(args.ppdet_root)
    base = os.path.join(root, config)
    for path, what in ((os.path.join(root, "tools", "train.py"), "--ppdet-root"), (base, "--config")):
        if not os.path.exists(path):
            sys.exit(f"{what}: {path} does not exist (give a PaddleDetection checkout and a config inside it)")
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="slim-ppdet-checkout-"))
    data = os.path.join(work, "shapes")
    subprocess.run([sys.executable, SHAPES, data, "--train", "16", "--val", "8"], check=True)
    name = "slim_" + os.path.splitext(os.path.basename(config))[0]
    cfg = os.path.join(work, name + ".yml")
    out = os.path.join(work, "output")  # checkpoints here, not in the checkout
    shutil.rmtree(out, ignore_errors=True)
    with open(cfg, "w") as f:
        f.write(overlay(base, data, out, size, epochs, readers))
    row = {"config": config, "size": size, "epochs": epochs, "ratios": args.ratios if prune else None}
    import paddle

    row["paddle"] = paddle.__version__
    row["load_before"] = [round(x, 1) for x in os.getloadavg()]
    logs = {step: os.path.join(work, step + ".log") for step in ("show", "train", "eval", "export", "infer")}
    if prune:
        print(f"[1/4] show ({config}, {size} px)", flush=True)
        stdout, _, _, row["show_s"] = run(["tools/train.py", "-c", cfg, "--plugin", "prune", "--prune.action", "show"],
                                          root, logs["show"], args.timeout)
        summary = re.search(r"(\d+) prunable groups.*?prunable convs hold (\d+)% of the FLOPs", stdout)
        row["groups"], row["prunable_flops_pct"] = int(summary.group(1)), int(summary.group(2))
        print(f"[2/4] train with --prune.ratios {args.ratios}", flush=True)
        train = ["tools/train.py", "-c", cfg, "--plugin", "prune", "--prune.ratios", args.ratios]
    else:
        print(f"[2/4] train unpruned ({config}, {size} px)", flush=True)
        train = ["tools/train.py", "-c", cfg]
    _, _, _, row["train_s"] = run(train, root, logs["train"], args.timeout)
    if prune:
        report = json.load(open(find(out, "prune_report.json")))
        row["flops_cut_pct"] = round(100 * (1 - report["after"]["flops"] / report["before"]["flops"]), 1)
        row["map_end_of_training"] = report["after_training"]["metric"]
    print("[3/4] eval in a fresh process", flush=True)
    weights = find(out, "model_final.pdparams")[:-len(".pdparams")]
    stdout, stderr, _, row["eval_s"] = run(["tools/eval.py", "-c", cfg, "-o", f"weights={weights}",
                                            f"--output_eval={os.path.join(work, 'eval')}"], root,
                                           logs["eval"], args.timeout)
    row["shapes_rebuilt"] = "rebuilt pruned shapes" in stderr
    row["map_fresh_eval"] = float(AP.findall(stdout)[-1])
    print("[4/4] export and Paddle Inference", flush=True)
    export_dir = os.path.join(work, "inference")
    stdout, stderr, code, row["export_s"] = run(
        ["tools/export_model.py", "-c", cfg, "-o", f"weights={weights}", f"--output_dir={export_dir}"], root,
        logs["export"], args.timeout, must=False)
    row["export"] = "ok" if code == 0 else failure(stdout + "\n" + stderr, root)
    if code == 0:
        stdout, stderr, code, row["infer_s"] = run([os.path.abspath(__file__), "--infer", os.path.join(
            export_dir, name), str(size)], root, logs["infer"], args.timeout, must=False)
        row["inference_outputs"] = json.loads(stdout.strip().splitlines()[-1]) if code == 0 else failure(
            stdout + "\n" + stderr, root)
    row["load_after"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
