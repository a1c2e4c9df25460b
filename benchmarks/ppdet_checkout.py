"""A model the paddledet wheel lacks (RT-DETR), pruned through a PaddleDetection source checkout's
own ``tools/train.py``, ``eval.py`` and ``export_model.py``, then run in Paddle Inference (issue 11).

usage: python benchmarks/ppdet_checkout.py --ppdet-root PaddleDetection
       [--config configs/rtdetr/rtdetr_r18vd_6x_coco.yml] [--size 320] [--epochs 2]
       [--ratios '*=0.3'] [--work DIR] [--json FILE]

The checkout is yours (``git clone https://github.com/PaddlePaddle/PaddleDetection``, outside this
repository), in a Python environment with Paddle, the checkout's ``requirements.txt`` imports and
slim-plugins installed (docs/ppdet.md, "Models the wheel lacks"). This script writes a small COCO
set of coloured rectangles and an overlay config whose ``_BASE_`` is the checkout's config (only the
data, the size, the batch and CPU settings are overridden: the model is the config's own), and runs,
each in a fresh process from the checkout's root, as a user does:

1. ``tools/train.py -c OVERLAY --plugin prune --prune.action show`` (timed),
2. ``tools/train.py -c OVERLAY --plugin prune --prune.ratios RATIOS`` (train with the pruned model),
3. ``tools/eval.py -c OVERLAY -o weights=<save_dir>/model_final`` (shapes rebuilt from the plan),
4. ``tools/export_model.py`` and a Paddle Inference predictor on the exported model (CPU).

It prints one row: groups, prunable FLOPs share, FLOPs cut, mAP at the end of training and in the
fresh eval, export and inference results, and the wall time of each step. No weights are
downloaded (``pretrain_weights`` is cleared): the mAP of two epochs on 16 images is near zero; the
row shows that the pruned shapes go through every command.
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


def overlay(base, data, size, epochs):
    """The checkout's config with this set, this size and CPU settings; the model sections as they are."""
    resize = f"{{target_size: [{size}, {size}], keep_ratio: False, interp: 2}}"
    norm = "{mean: [0., 0., 0.], std: [1., 1., 1.], norm_type: none}"
    return f"""_BASE_: ['{base}']
use_gpu: false
norm_type: bn
num_classes: 3
worker_num: 0
log_iter: 5
epoch: {epochs}
snapshot_epoch: 100
save_dir: output_slim
pretrain_weights: ''
use_ema: false
eval_size: [{size}, {size}]
TrainDataset: {{name: COCODataSet, dataset_dir: {data}, image_dir: train, anno_path: annotations/train.json,
  data_fields: ['image', 'gt_bbox', 'gt_class', 'is_crowd']}}
EvalDataset: {{name: COCODataSet, dataset_dir: {data}, image_dir: val, anno_path: annotations/val.json,
  allow_empty: true}}
TestDataset: {{name: ImageFolder, anno_path: annotations/val.json, dataset_dir: {data}}}
TrainReader:
  batch_transforms:
    - BatchRandomResize: {{target_size: [{size}], random_size: True, random_interp: True, keep_ratio: False}}
    - NormalizeImage: {norm}
    - NormalizeBox: {{}}
    - BboxXYXY2XYWH: {{}}
    - Permute: {{}}
  batch_size: 2
  use_shared_memory: false
EvalReader:
  sample_transforms: [Decode: {{}}, Resize: {resize}, NormalizeImage: {norm}, Permute: {{}}]
  batch_size: 2
TestReader:
  inputs_def: {{image_shape: [3, {size}, {size}]}}
  sample_transforms: [Decode: {{}}, Resize: {resize}, NormalizeImage: {norm}, Permute: {{}}]
  batch_size: 1
"""


def run(cmd, cwd, log):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable] + cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    with open(log, "w") as f:
        f.write(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}); see {log}:\n{proc.stderr[-3000:]}")
    return proc, seconds


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ppdet-root", required=True, help="a PaddleDetection source checkout")
    parser.add_argument("--config", default="configs/rtdetr/rtdetr_r18vd_6x_coco.yml")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ratios", default="*=0.3")
    parser.add_argument("--work", default=None, help="folder for the data, overlay and logs (default: temporary)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    root = os.path.abspath(args.ppdet_root)
    base = os.path.join(root, args.config)
    for path, what in ((os.path.join(root, "tools", "train.py"), "--ppdet-root"), (base, "--config")):
        if not os.path.exists(path):
            sys.exit(f"{what}: {path} does not exist (give a PaddleDetection checkout and a config inside it)")
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="slim-ppdet-checkout-"))
    data = os.path.join(work, "shapes")
    subprocess.run([sys.executable, SHAPES, data, "--train", "16", "--val", "8"], check=True)
    name = "slim_" + os.path.splitext(os.path.basename(args.config))[0]
    cfg = os.path.join(work, name + ".yml")
    with open(cfg, "w") as f:
        f.write(overlay(base, data, args.size, args.epochs))
    out = os.path.join(root, "output_slim")
    shutil.rmtree(out, ignore_errors=True)
    row = {"config": args.config, "size": args.size}
    import paddle

    row["paddle"] = paddle.__version__
    print(f"[1/4] show ({args.config}, {args.size} px)", flush=True)
    proc, row["show_s"] = run(["tools/train.py", "-c", cfg, "--plugin", "prune", "--prune.action", "show"], root,
                              os.path.join(work, "show.log"))
    summary = re.search(r"(\d+) prunable groups.*?prunable convs hold (\d+)% of the FLOPs", proc.stdout)
    row["groups"], row["prunable_flops_pct"] = int(summary.group(1)), int(summary.group(2))
    print(f"[2/4] train with --prune.ratios {args.ratios}", flush=True)
    proc, row["train_s"] = run(["tools/train.py", "-c", cfg, "--plugin", "prune", "--prune.ratios", args.ratios],
                               root, os.path.join(work, "train.log"))
    report = json.load(open(find(out, "prune_report.json")))
    row["flops_cut_pct"] = round(100 * (1 - report["after"]["flops"] / report["before"]["flops"]), 1)
    row["map_end_of_training"] = report["after_training"]["metric"]
    print("[3/4] eval in a fresh process", flush=True)
    weights = find(out, "model_final.pdparams")[:-len(".pdparams")]
    proc, row["eval_s"] = run(["tools/eval.py", "-c", cfg, "-o", f"weights={weights}"], root,
                              os.path.join(work, "eval.log"))
    row["shapes_rebuilt"] = "rebuilt pruned shapes" in proc.stderr
    row["map_fresh_eval"] = float(AP.findall(proc.stdout)[-1])
    print("[4/4] export and Paddle Inference", flush=True)
    export_dir = os.path.join(work, "inference")
    _, row["export_s"] = run(["tools/export_model.py", "-c", cfg, "-o", f"weights={weights}",
                              f"--output_dir={export_dir}"], root, os.path.join(work, "export.log"))
    row["inference_outputs"] = infer(os.path.join(export_dir, name), args.size)
    print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
