"""``--prune.action show`` through the suites' unchanged train commands, timed (issues 11 and 13).

    python benchmarks/bench_show.py [--models yolov3_mbv1,picodet_s,ppyoloe_plus_s,faster_rcnn_r50_fpn,
                                     db_mv3,ppocrv4_det,crnn_mv3,ppocrv3_rec,ppocrv4_rec,
                                     pdx_mobilenetv2,pdx_resnet50_vd,pdx_yolov3] [--workers 2] [--json OUT]

ppdet models run through the tests' ppdet driver (tests/scripts/ppdet_tools.py: tools/train.py's
calls), PaddleOCR models through PaddleOCR's own tools/train.py; each from a config written here:
the model sections of benchmarks/flagship_graph.py / flagship_graph_ocr.py at the config's own
eval size, on generated data, with a TrainReader like the public configs' (``--workers`` loader
processes). PaddleX models run through the tests' PaddleX scripts (tests/scripts/paddlex_shapes.py
with ``--arch``, on 224-pixel images; tests/scripts/paddlex_boxes.py, YOLOv3 + MobileNetV1 at 608).
Per model: wall and CPU seconds of the whole command (its children included), the seconds up to
the plugin's ``tracing`` line (suite setup: config, model, readers), from there to the last line
of output (trace, inventory, table) and from that to the exit (shutting down what the suite
started). Timings depend on the machine and its load: compare rows of one run,
or one model's row across trees run back to back (``PYTHONPATH=TREE python benchmarks/bench_show.py``).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPTS = os.path.join(REPO, "tests", "scripts")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

TRACING = "[slim-plugins prune] tracing "
PPDET = ("yolov3_mbv1", "picodet_s", "ppyoloe_plus_s", "faster_rcnn_r50_fpn")
OCR = ("db_mv3", "ppocrv4_det")
OCR_REC = ("crnn_mv3", "ppocrv3_rec", "ppocrv4_rec")
PADDLEX = {"pdx_mobilenetv2": "MobileNetV2", "pdx_resnet50_vd": "ResNet50_vd", "pdx_yolov3": None}
PDX_CLS_SIZE, PDX_DET_SIZE = 224, 608  # the PaddleX classifiers' crop; YOLOv3's default input
# the public configs' eval sizes: det_mv3_db.yml resizes to 736x1280, PP-OCRv4 det gives none
OCR_SHAPES = {"db_mv3": [736, 1280], "ppocrv4_det": None}


def ppdet_config(name, directory, data, workers):
    """flagship_graph.py's model at its eval size, on ``data``, with a TrainReader that prefetches."""
    import flagship_graph

    size, body = flagship_graph.CONFIGS[name]
    extra = f"eval_size: [{size}, {size}]\n" if name == "ppyoloe_plus_s" else ""
    text = (flagship_graph.COMMON.replace("num_classes: 80", "num_classes: 3") + extra + body
            + flagship_graph.reader(size) + f"""
save_dir: {directory}/output
epoch: 1
log_iter: 1
snapshot_epoch: 1
worker_num: {workers}
TrainDataset:
  name: COCODataSet
  dataset_dir: {data}
  image_dir: train
  anno_path: annotations/train.json
  data_fields: ['image', 'gt_bbox', 'gt_class', 'is_crowd']
EvalDataset:
  name: COCODataSet
  dataset_dir: {data}
  image_dir: val
  anno_path: annotations/val.json
  allow_empty: true
TestDataset:
  name: ImageFolder
  anno_path: annotations/val.json
  dataset_dir: {data}
TestReader:
  inputs_def:
    image_shape: [1, 3, {size}, {size}]
  sample_transforms:
  - Decode: {{}}
  - Resize: {{interp: 2, target_size: [{size}, {size}], keep_ratio: False}}
  - NormalizeImage: {{is_scale: true, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
  - Permute: {{}}
  batch_size: 1
TrainReader:
  sample_transforms:
  - Decode: {{}}
  - RandomDistort: {{}}
  - RandomExpand: {{fill_value: [123.675, 116.28, 103.53]}}
  - RandomCrop: {{}}
  - RandomFlip: {{}}
  batch_transforms:
  - BatchRandomResize: {{target_size: [{size - 64}, {size}, {size + 64}], random_size: True, random_interp: True,
                         keep_ratio: False}}
  - NormalizeImage: {{is_scale: true, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
  - Permute: {{}}
  - PadGT: {{}}
  batch_size: 8
  shuffle: true
  drop_last: true
  use_shared_memory: false
LearningRate:
  base_lr: 0.01
  schedulers:
  - !PiecewiseDecay {{gamma: 0.1, milestones: [100]}}
  - !LinearWarmup {{start_factor: 0.1, steps: 10}}
OptimizerBuilder:
  optimizer: {{momentum: 0.9, type: Momentum}}
  regularizer: {{factor: 0.0005, type: L2}}
""")
    path = os.path.join(directory, f"{name}.yml")
    with open(path, "w") as f:
        f.write(text)
    return path


def ocr_global(directory, **extra):
    """The Global section of PaddleOCR's public configs, one epoch, writing into ``directory``."""
    return {"use_gpu": False, "epoch_num": 1, "log_smooth_window": 20, "print_batch_step": 10,
            "save_model_dir": os.path.join(directory, "output"), "save_epoch_step": 1000,
            "eval_batch_step": [0, 2000], "cal_metric_during_train": False, "pretrained_model": None,
            "checkpoints": None, "save_inference_dir": None, "use_visualdl": False, "seed": 1024, **extra}


def ocr_config(name, directory, data, workers):
    """flagship_graph_ocr.py's model with det_mv3_db.yml's Train and Eval sections, on ``data``."""
    import flagship_graph_ocr
    import yaml

    arch = flagship_graph_ocr.MODELS[name]["arch"]
    normalize = {"NormalizeImage": {"scale": "1./255.", "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225], "order": "hwc"}}
    resize = {"DetResizeForTest": {"image_shape": OCR_SHAPES[name]} if OCR_SHAPES[name] else None}
    loader = {"shuffle": True, "drop_last": False, "batch_size_per_card": 16, "num_workers": workers,
              "use_shared_memory": False}
    config = {
        "Global": ocr_global(directory),
        "Architecture": arch,
        "Loss": {"name": "DBLoss", "balance_loss": True, "main_loss_type": "DiceLoss", "alpha": 5, "beta": 10,
                 "ohem_ratio": 3},
        "Optimizer": {"name": "Adam", "beta1": 0.9, "beta2": 0.999, "lr": {"learning_rate": 0.001},
                      "regularizer": {"name": "L2", "factor": 0}},
        "PostProcess": {"name": "DBPostProcess", "thresh": 0.3, "box_thresh": 0.6, "max_candidates": 1000,
                        "unclip_ratio": 1.5},
        "Metric": {"name": "DetMetric", "main_indicator": "hmean"},
        "Train": {"dataset": {"name": "SimpleDataSet", "data_dir": data, "ratio_list": [1.0],
                              "label_file_list": [os.path.join(data, "train_label.txt")],
                              "transforms": [
                                  {"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
                                  {"DetLabelEncode": None},
                                  {"IaaAugment": {"augmenter_args": [
                                      {"type": "Fliplr", "args": {"p": 0.5}},
                                      {"type": "Affine", "args": {"rotate": [-10, 10]}},
                                      {"type": "Resize", "args": {"size": [0.5, 3]}}]}},
                                  {"EastRandomCropData": {"size": [640, 640], "max_tries": 50, "keep_ratio": True}},
                                  {"MakeBorderMap": {"shrink_ratio": 0.4, "thresh_min": 0.3, "thresh_max": 0.7}},
                                  {"MakeShrinkMap": {"shrink_ratio": 0.4, "min_text_size": 8}},
                                  normalize, {"ToCHWImage": None},
                                  {"KeepKeys": {"keep_keys": ["image", "threshold_map", "threshold_mask",
                                                              "shrink_map", "shrink_mask"]}}]},
                  "loader": loader},
        "Eval": {"dataset": {"name": "SimpleDataSet", "data_dir": data,
                             "label_file_list": [os.path.join(data, "test_label.txt")],
                             "transforms": [
                                 {"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
                                 {"DetLabelEncode": None}, resize, normalize, {"ToCHWImage": None},
                                 {"KeepKeys": {"keep_keys": ["image", "shape", "polys", "ignore_tags"]}}]},
                 "loader": dict(loader, shuffle=False, batch_size_per_card=1, num_workers=min(workers, 2))},
    }
    path = os.path.join(directory, f"{name}.yml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def ocr_rec_config(name, directory, data, workers):
    """flagship_graph_ocr.py's recogniser at its eval shape, on the generated word crops, with the
    public config's dictionary (PaddleOCR's default one for CRNN) and loss."""
    import flagship_graph_ocr
    import yaml

    spec = flagship_graph_ocr.MODELS[name]
    gtc = spec["gtc"]
    if gtc is None:
        encode, keys, loss = {"CTCLabelEncode": None}, ["image", "label", "length"], {"name": "CTCLoss"}
    else:
        encode = {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"} if gtc == "NRTR" else None}
        keys = ["image", "label_ctc", "label_gtc" if gtc == "NRTR" else "label_sar", "length", "valid_ratio"]
        loss = {"name": "MultiLoss", "loss_config_list": [{"CTCLoss": None}, {f"{gtc}Loss": None}]}
    transforms = [{"DecodeImage": {"img_mode": "BGR", "channel_first": False}}, encode,
                  {"RecResizeImg": {"image_shape": list(spec["image_shape"])}}, {"KeepKeys": {"keep_keys": keys}}]
    loader = {"shuffle": True, "drop_last": True, "batch_size_per_card": 16, "num_workers": workers,
              "use_shared_memory": False}
    config = {
        "Global": ocr_global(directory, character_dict_path=spec["dictionary"],
                             max_text_length=flagship_graph_ocr.MAX_TEXT, use_space_char=gtc is not None),
        "Architecture": spec["arch"],
        "Loss": loss,
        "Optimizer": {"name": "Adam", "beta1": 0.9, "beta2": 0.999, "lr": {"learning_rate": 0.001},
                      "regularizer": {"name": "L2", "factor": 0}},
        "PostProcess": {"name": "CTCLabelDecode"},
        "Metric": {"name": "RecMetric", "main_indicator": "acc"},
    }
    for mode, labels, extra in (("Train", "train_label.txt", {}),
                                ("Eval", "test_label.txt", {"shuffle": False, "drop_last": False})):
        config[mode] = {"dataset": {"name": "SimpleDataSet", "data_dir": data,
                                    "label_file_list": [os.path.join(data, labels)], "transforms": transforms},
                        "loader": dict(loader, **extra)}
    path = os.path.join(directory, f"{name}.yml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def make_data(directory, images, models):
    """What ``models`` read: COCO-style shapes for ppdet (tests/scripts/ppdet_shapes.py), text
    images and word crops for PaddleOCR, an image-folder and a VOC set for PaddleX (the tests')."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import random

    data = {}
    if set(models) & set(PPDET):
        data["ppdet"] = os.path.join(directory, "shapes")
        subprocess.run([sys.executable, os.path.join(SCRIPTS, "ppdet_shapes.py"), data["ppdet"], "--train",
                        str(images), "--val", "8", "--size", "512"], check=True, timeout=300)
    if set(models) & set(OCR + OCR_REC):
        import test_ppocr_adapter as t

        rng = random.Random(0)
        data["ocr"], data["rec"] = os.path.join(directory, "words"), os.path.join(directory, "crops")
        t.make_det_set(data["ocr"], "train", images, rng)
        t.make_det_set(data["ocr"], "test", 8, rng)
        t.make_rec_set(data["rec"], "train", images, rng)
        t.make_rec_set(data["rec"], "test", 8, rng)
    if set(models) & {"pdx_mobilenetv2", "pdx_resnet50_vd"}:
        import test_paddlex_adapter

        data["pdx_cls"] = test_paddlex_adapter.make_shapes_set(os.path.join(directory, "pdx_cls"),
                                                               n_train=max(1, images // 3), n_val=2,
                                                               size=PDX_CLS_SIZE)
    if "pdx_yolov3" in models:
        import test_paddlex_detector

        data["pdx_det"] = test_paddlex_detector.make_boxes_set(os.path.join(directory, "pdx_det"),
                                                              size=PDX_DET_SIZE)
    return data


def ppocr_root():
    import flagship_graph_ocr

    return flagship_graph_ocr.ppocr_root()


def timed(args, cwd):
    """Run ``args``; (rc, wall s, CPU s of it and its children, s to the tracing line, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIM_PLUGINS", "PADDLE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    traced, last, lines = None, None, []
    for line in proc.stdout:
        last = time.perf_counter() - start
        if traced is None and line.startswith(TRACING):
            traced = last
        lines.append(line)
    rc = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, wall, cpu, traced, last, "".join(lines)


def run_model(name, directory, data, workers):
    show = ["--plugin", "prune", "--prune.action", "show"]
    cwd = directory
    if name in PPDET:
        cfg = ppdet_config(name, directory, data["ppdet"], workers)
        args = [sys.executable, os.path.join(SCRIPTS, "ppdet_tools.py"), "train", "-c", cfg] + show
    elif name in PADDLEX:
        out = os.path.join(directory, name)
        if PADDLEX[name]:
            args = [sys.executable, os.path.join(SCRIPTS, "paddlex_shapes.py"), data["pdx_cls"], out, "--epochs",
                    "1", "--arch", PADDLEX[name]] + show
        else:
            args = [sys.executable, os.path.join(SCRIPTS, "paddlex_boxes.py"), data["pdx_det"], out,
                    "--size", str(PDX_DET_SIZE)] + show
    else:
        if name in OCR_REC:
            cfg = ocr_rec_config(name, directory, data["rec"], workers)
        else:
            cfg = ocr_config(name, directory, data["ocr"], workers)
        cwd = ppocr_root()
        args = [sys.executable, os.path.join(cwd, "tools", "train.py"), "-c", cfg] + show
    rc, wall, cpu, traced, last, out = timed(args, cwd)
    import paddle

    row = {"model": name, "paddle": paddle.__version__, "rc": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "setup_s": round(traced, 1) if traced is not None else None,
           "show_s": round(last - traced, 1) if traced is not None else None,
           "exit_s": round(wall - last, 1),
           # PaddleX scripts build their datasets themselves, before train(): nothing to skip
           "train_loader_skipped": None if name in PADDLEX else
           "Train loader is not built" in out or "train reader is not built" in out}
    if rc != 0 or traced is None:
        row["error"] = out[-3000:]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PPDET + OCR + OCR_REC + tuple(PADDLEX)))
    parser.add_argument("--workers", type=int, default=2, help="train loader worker processes (the configs' own)")
    parser.add_argument("--images", type=int, default=64, help="train images generated")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_show_") as directory:
        models = args.models.split(",")
        data = make_data(directory, args.images, models)
        load = os.getloadavg()[0]
        for name in models:
            row = run_model(name, directory, data, args.workers)
            row["load_before"] = round(load, 2)
            load = os.getloadavg()[0]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
            if "error" in row:
                print(row["error"], file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
