"""Our pruning graph on today's flagship detectors and classifiers (issue 11).

usage: python benchmarks/flagship_graph.py [--models yolov3,ppyoloe ...] [--ratios 0.3 0.9]
       [--no-train] [--no-paddleslim] [--json FILE]

Each ppdet model is built as ``tools/train.py`` builds it (``load_config`` + ``create``) from a
self-contained config this script writes into a temporary directory, put in eval mode at its eval
size, and fed the dict inputs the ppdet adapter gives. PaddleX models come from ``paddlex.cls`` /
``paddlex.det``. For each model: the prune plugin's ``show`` (PrunableModel + inventory, timed,
inside the adapter's trace context), then every group pruned at each ratio, an eval forward, and a
train-mode forward + backward where the script can make a training batch; and PaddleSlim's
FilterPruner on the same model for comparison (where it traces). One row per model at the end.
No weights are downloaded: the graph does not depend on the values.
"""
import argparse
import collections
import json
import os
import re
import sys
import tempfile
import textwrap
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NMS = """
  nms:
    name: MultiClassNMS
    nms_top_k: 1000
    keep_top_k: 100
    score_threshold: 0.01
    nms_threshold: 0.6
"""


def reader(size, stride=32):
    return textwrap.dedent(f"""
    EvalReader:
      sample_transforms:
      - Decode: {{}}
      - Resize: {{interp: 2, target_size: [{size}, {size}], keep_ratio: False}}
      - NormalizeImage: {{is_scale: true, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
      - Permute: {{}}
      batch_transforms:
      - PadBatch: {{pad_to_stride: {stride}}}
      batch_size: 1
    """)


COMMON = "norm_type: bn\nuse_gpu: false\nnum_classes: 80\nmetric: COCO\n"

# the model sections of PaddleDetection 2.6's configs, without _BASE_ (pretrain weights left out)
CONFIGS = {
    "yolov3_mbv1": (608, """
architecture: YOLOv3
YOLOv3:
  backbone: MobileNet
  neck: YOLOv3FPN
  yolo_head: YOLOv3Head
  post_process: BBoxPostProcess
MobileNet:
  scale: 1
  feature_maps: [4, 6, 13]
  with_extra_blocks: false
  extra_block_filters: []
YOLOv3Head:
  anchors: [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]]
  anchor_masks: [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
  loss: YOLOv3Loss
YOLOv3Loss:
  ignore_thresh: 0.7
  downsample: [32, 16, 8]
  label_smooth: false
BBoxPostProcess:
  decode:
    name: YOLOBox
    conf_thresh: 0.005
    downsample_ratio: 32
    clip_bbox: true
""" + NMS),
    "picodet_s": (320, """
architecture: PicoDet
PicoDet:
  backbone: LCNet
  neck: LCPAN
  head: PicoHeadV2
LCNet:
  scale: 0.75
  feature_maps: [3, 4, 5]
LCPAN:
  out_channels: 96
  use_depthwise: True
  num_features: 4
PicoHeadV2:
  conv_feat:
    name: PicoFeat
    feat_in: 96
    feat_out: 96
    num_convs: 2
    num_fpn_stride: 4
    norm_type: bn
    share_cls_reg: True
    use_se: True
  fpn_stride: [8, 16, 32, 64]
  feat_in_chan: 96
  prior_prob: 0.01
  reg_max: 7
  cell_offset: 0.5
  grid_cell_scale: 5.0
  static_assigner_epoch: 100
  use_align_head: True
  static_assigner:
    name: ATSSAssigner
    topk: 4
    force_gt_matching: False
  assigner:
    name: TaskAlignedAssigner
    topk: 13
    alpha: 1.0
    beta: 6.0
  loss_class:
    name: VarifocalLoss
    use_sigmoid: False
    iou_weighted: True
    loss_weight: 1.0
  loss_dfl:
    name: DistributionFocalLoss
    loss_weight: 0.5
  loss_bbox:
    name: GIoULoss
    loss_weight: 2.5
""" + NMS),
    "ppyoloe_plus_s": (640, """
architecture: PPYOLOE
depth_mult: 0.33
width_mult: 0.50
PPYOLOE:
  backbone: CSPResNet
  neck: CustomCSPPAN
  yolo_head: PPYOLOEHead
  post_process: ~
CSPResNet:
  layers: [3, 6, 6, 3]
  channels: [64, 128, 256, 512, 1024]
  return_idx: [1, 2, 3]
  use_large_stem: True
  use_alpha: True
CustomCSPPAN:
  out_channels: [768, 384, 192]
  stage_num: 1
  block_num: 3
  act: 'swish'
  spp: true
PPYOLOEHead:
  fpn_strides: [32, 16, 8]
  grid_cell_scale: 5.0
  grid_cell_offset: 0.5
  static_assigner_epoch: 30
  use_varifocal_loss: True
  loss_weight: {class: 1.0, iou: 2.5, dfl: 0.5}
  static_assigner:
    name: ATSSAssigner
    topk: 9
  assigner:
    name: TaskAlignedAssigner
    topk: 13
    alpha: 1.0
    beta: 6.0
""" + NMS),
    "faster_rcnn_r50_fpn": (512, """
architecture: FasterRCNN
FasterRCNN:
  backbone: ResNet
  neck: FPN
  rpn_head: RPNHead
  bbox_head: BBoxHead
  bbox_post_process: BBoxPostProcess
ResNet:
  depth: 50
  norm_type: bn
  freeze_at: 0
  return_idx: [0, 1, 2, 3]
  num_stages: 4
FPN:
  out_channel: 256
RPNHead:
  anchor_generator:
    aspect_ratios: [0.5, 1.0, 2.0]
    anchor_sizes: [[32], [64], [128], [256], [512]]
    strides: [4, 8, 16, 32, 64]
  rpn_target_assign:
    batch_size_per_im: 256
    fg_fraction: 0.5
    negative_overlap: 0.3
    positive_overlap: 0.7
    use_random: True
  train_proposal:
    min_size: 0.0
    nms_thresh: 0.7
    pre_nms_top_n: 2000
    post_nms_top_n: 1000
    topk_after_collect: True
  test_proposal:
    min_size: 0.0
    nms_thresh: 0.7
    pre_nms_top_n: 1000
    post_nms_top_n: 1000
BBoxHead:
  head: TwoFCHead
  roi_extractor:
    resolution: 7
    sampling_ratio: 0
    aligned: True
  bbox_assigner: BBoxAssigner
BBoxAssigner:
  batch_size_per_im: 512
  bg_thresh: 0.5
  fg_thresh: 0.5
  fg_fraction: 0.25
  use_random: True
TwoFCHead:
  out_channel: 1024
BBoxPostProcess:
  decode: RCNNBox
  nms:
    name: MultiClassNMS
    keep_top_k: 100
    score_threshold: 0.05
    nms_threshold: 0.5
"""),
}
PADDLEX = {"paddlex_mobilenetv2": 224, "paddlex_resnet50_vd": 224, "paddlex_yolov3": 608}
MODELS = list(CONFIGS) + list(PADDLEX)


def write_config(name, directory, size=None):
    """A self-contained ppdet config for ``name`` at eval ``size`` (its own by default)."""
    default, body = CONFIGS[name]
    size = size or default
    extra = ""
    if name == "ppyoloe_plus_s":  # ppdet's PP-YOLOE+ configs give the head its eval size
        extra = f"eval_size: [{size}, {size}]\n"
    path = os.path.join(directory, f"{name}.yml")
    with open(path, "w") as f:
        f.write(COMMON + extra + body + reader(size))
    return path


# ---------------------------------------------------------------------- building
def suite_fixes():
    """The fixes the tests' ppdet driver applies to the paddledet 2.6.0 wheel on today's Paddle
    (int64 assigner labels on Paddle 3, 1-D RoI counts for R-CNN): a user's checkout has them."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "scripts"))
    import ppdet_tools

    ppdet_tools.fix_assigners_for_paddle3()
    ppdet_tools.fix_rpn_for_0d_shapes()


def build_ppdet(name, directory, size=None):
    """model, run (what the adapter sees), eval inputs, a train batch maker."""
    import paddle
    import ppdet.modeling  # noqa: F401  registers the modules, as tools/train.py's imports do
    from ppdet.core.workspace import create, load_config

    from slim_plugins.adapters.ppdet import adapter

    path = write_config(name, directory, size)
    cfg = load_config(path)
    paddle.seed(0)
    model = create(cfg.architecture)
    model.eval()
    run = types.SimpleNamespace(adapter="ppdet", handle=types.SimpleNamespace(cfg=cfg, model=model), state={})
    inputs = adapter.forward_inputs(run, 1)
    return model, inputs, adapter.trace_context(run), lambda: ppdet_train_batch(name, model, cfg, inputs[0])


def ppdet_train_batch(name, model, cfg, eval_batch):
    """A training batch as ppdet's TrainReader makes it for this architecture (two boxes)."""
    import paddle

    image = eval_batch["image"]
    h, w = image.shape[2:]
    boxes = paddle.to_tensor([[[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.8 * h]]])
    classes = paddle.to_tensor([[[1], [3]]], dtype="int32")
    batch = dict(eval_batch)
    if name == "faster_rcnn_r50_fpn":
        batch.update(gt_bbox=[boxes[0]], gt_class=[classes[0]], is_crowd=[paddle.zeros([2, 1], "int32")])
    elif name == "yolov3_mbv1":
        batch["gt_bbox"] = boxes / paddle.to_tensor([w, h, w, h], dtype="float32")
        for i, stride in enumerate((32, 16, 8)):
            batch[f"target{i}"] = paddle.zeros([1, 3, 6 + 80, h // stride, w // stride])
    else:
        batch.update(gt_bbox=boxes, gt_class=classes, im_id=paddle.zeros([1, 1], "int64"),
                     pad_gt_mask=paddle.ones([1, 2, 1]), is_crowd=paddle.zeros([1, 2, 1], "int32"), epoch_id=0,
                     curr_iter=0)
    return [batch]


def build_paddlex(name, size=None):
    import paddle
    import paddlex as pdx

    paddle.seed(0)
    if name == "paddlex_yolov3":
        wrapper = pdx.det.YOLOv3(num_classes=80, backbone="MobileNetV1")
        model = wrapper.net
        size = size or PADDLEX[name]
        inputs = [{"image": paddle.ones([1, 3, size, size]), "im_shape": paddle.to_tensor([[float(size)] * 2]),
                   "scale_factor": paddle.ones([1, 2])}]
        context = None
        try:
            from slim_plugins.adapters.paddlex import adapter

            run = types.SimpleNamespace(adapter="paddlex", handle=wrapper, state={})
            context = adapter.trace_context(run)
        except Exception:  # noqa: BLE001  older trees: no context
            pass
        model.eval()

        def train_batch():
            batch = dict(inputs[0])
            batch["gt_bbox"] = paddle.to_tensor([[[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]])
            batch["gt_class"] = paddle.to_tensor([[[1], [3]]], dtype="int32")
            for i, stride in enumerate((32, 16, 8)):
                batch[f"target{i}"] = paddle.zeros([1, 3, 6 + 80, size // stride, size // stride])
            return [batch]

        return model, inputs, context, train_batch
    cls = {"paddlex_mobilenetv2": "MobileNetV2", "paddlex_resnet50_vd": "ResNet50_vd"}[name]
    model = getattr(pdx.cls, cls)(num_classes=1000).net
    model.eval()
    size = size or PADDLEX[name]
    inputs = [paddle.ones([1, 3, size, size])]
    return model, inputs, None, lambda: inputs


def train_loss(model, batch):
    out = model(*batch)
    if isinstance(out, dict):
        return out["loss"]
    return out.mean()


# ---------------------------------------------------------------------- measuring
def short_reason(reason):
    reason = re.sub(r"^coupled with \S+: ", "", reason)
    return re.sub(r"\s+at \S+:\d+\)", ")", reason)


def show(model, inputs, context):
    """The prune plugin's show: groups, inventory rows, seconds."""
    import contextlib

    from slim_plugins.plugins.prune.inventory import inventory
    from slim_plugins.plugins.prune.model import PrunableModel

    started = time.perf_counter()
    with context or contextlib.nullcontext():
        prunable = PrunableModel(model, inputs, mode="eval")
    rows = inventory(prunable, inputs)
    return prunable, rows, time.perf_counter() - started


def paddleslim(model, inputs, prunable):
    """Conv weights whose output channels PaddleSlim's FilterPruner prunes, and their FLOPs share."""
    from slim_plugins import compat
    from slim_plugins.plugins.prune import measure

    pruner_cls = compat.import_paddleslim_pruners()["l1_norm"]
    model.eval()
    try:
        with compat.tracing():
            pruner = pruner_cls(model, inputs)
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip()
        return None, None, f"{type(exc).__name__}: {text.splitlines()[-1][:160] if text else ''}"
    finally:
        model.eval()
    convs = set()
    for coll in pruner.collections:
        if coll.master_axis != 0 or coll.master_name in pruner.skip_vars:
            continue
        for detail in coll.all_pruning_details():
            name = prunable.structured.get(detail.name)
            if detail.axis == 0 and name and len(prunable.params[detail.name].shape) == 4:
                convs.add(name)
    per_layer = measure.flops_by_layer(model, inputs)
    total = sum(per_layer.values()) or 1
    share = sum(v for k, v in per_layer.items() if f"{k}.weight" in convs) / total
    return convs, share, ""


def prune_checks(prunable, inputs, train_batch, ratios, train):
    """Every selected group at each ratio: eval forward (PrunableModel.prune checks it), then a
    train-mode forward + backward."""
    import paddle

    out = {}
    groups = prunable.selected_groups()
    model = prunable.model
    for ratio in ratios:
        result = {}
        try:
            applied = prunable.prune({g: ratio for g in groups}, check_inputs=inputs)
            result["eval"] = "ok"
        except Exception as exc:  # noqa: BLE001
            result["eval"] = f"FAIL {type(exc).__name__}: {str(exc)[:300]}"
            out[ratio] = result
            continue
        if train:
            try:
                model.train()
                loss = train_loss(model, train_batch())
                loss.backward()
                result["train"] = "ok" if bool(paddle.isfinite(loss).all()) else "non-finite loss"
            except Exception as exc:  # noqa: BLE001
                result["train"] = f"FAIL {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
            finally:
                model.clear_gradients()
                model.eval()
        applied.restore()
        out[ratio] = result
    return out


def measure_model(name, directory, ratios, train=True, compare=True, size=None):
    import paddle

    if name in CONFIGS:
        suite_fixes()
        model, inputs, context, train_batch = build_ppdet(name, directory, size)
    else:
        model, inputs, context, train_batch = build_paddlex(name, size)
    row = {"model": name, "paddle": paddle.__version__, "size": list(
        (inputs[0]["image"] if isinstance(inputs[0], dict) else inputs[0]).shape[2:])}
    try:
        prunable, rows, seconds = show(model, inputs, context)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        return row
    ours = {r.weight for r in rows if r.status in ("prunable", "follows")}
    row.update(groups=len(prunable.groups), convs=len(rows), prunable_convs=len(ours),
               flops_share=round(sum(r.flops_share for r in rows if r.status in ("prunable", "follows")), 4),
               show_s=round(seconds, 1), trace_s=round(prunable.trace_seconds, 1), traced=prunable.traced_modes)
    row["skips"] = dict(collections.Counter(short_reason(r.reason) for r in rows if r.status == "skipped"))
    if compare:
        convs, share, error = paddleslim(model, inputs, prunable)
        if convs is None:
            row["paddleslim"] = {"error": error}
        else:
            row["paddleslim"] = {"prunable_convs": len(convs), "flops_share": round(share, 4),
                                 "only_paddleslim": sorted(convs - ours)}
    row["pruned"] = {str(r): v for r, v in prune_checks(prunable, inputs, train_batch, ratios, train).items()}
    return row


def line(row):
    if "error" in row:
        return f"{row['model']:<22} {row['paddle']:<7} ERROR {row['error'][:200]}"
    ps = row.get("paddleslim", {})
    theirs = f"{ps['flops_share']:.0%}" if "flops_share" in ps else ("-" if not ps else "fails")
    pruned = " ".join(f"{r}:{v.get('eval', '?')[:4]}/{v.get('train', '-')[:4]}" for r, v in row["pruned"].items())
    skips = "; ".join(f"{k} x{v}" for k, v in sorted(row["skips"].items(), key=lambda kv: -kv[1]))
    return (f"{row['model']:<22} {row['paddle']:<7} {row['groups']:>4} groups  {row['flops_share']:>4.0%} / "
            f"{theirs:>5} FLOPs  show {row['show_s']:>5.1f}s (trace {row['trace_s']:.1f}s)  {pruned}\n"
            f"{'':<30}skips: {skips or '-'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.3, 0.9])
    parser.add_argument("--size", type=int, default=None, help="eval size instead of each config's own")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-paddleslim", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="flagship_") as directory:
        for name in args.models.split(","):
            row = measure_model(name, directory, args.ratios, train=not args.no_train,
                                compare=not args.no_paddleslim, size=args.size)
            rows.append(row)
            print(line(row), flush=True)
            if row.get("paddleslim", {}).get("only_paddleslim"):
                print(f"{'':<30}PaddleSlim only: {', '.join(row['paddleslim']['only_paddleslim'][:8])}")
            for ratio, checks in row.get("pruned", {}).items():
                for what, text in checks.items():
                    if text != "ok":
                        print(f"{'':<30}{ratio} {what}: {text[:300]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
