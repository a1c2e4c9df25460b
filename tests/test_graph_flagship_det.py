"""Our pruning graph on today's flagship detectors (issue 11), on whichever Paddle runs the tests.

PP-YOLOE+-s (CSPResNet whose RepVGG blocks branch on ``if self.alpha``, CustomCSPPAN, PPYOLOEHead
with DFL) and Faster R-CNN R50-FPN (RPN, RoIAlign, TwoFCHead) are built as ``tools/train.py``
builds them (``load_config`` + ``create``) from configs written here, small, and traced inside the
ppdet adapter's trace context with the adapter's inputs. The end-to-end test runs ``--prune.action
show`` through the tests' ppdet driver: there the prune plugin enters the context itself.
"""
import importlib.util
import os
import sys
import types

import pytest

from conftest import SCRIPTS, paddle_inference

needs_ppdet = pytest.mark.skipif(
    importlib.util.find_spec("ppdet") is None,
    reason="paddledet is not installed (pip install --no-deps paddledet==2.6.0 and its imports: see docs/ppdet.md)")

SIZE = 160

PPYOLOE = f"""
architecture: PPYOLOE
norm_type: bn
num_classes: 4
depth_mult: 0.33
width_mult: 0.25
eval_size: [{SIZE}, {SIZE}]
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
  loss_weight: {{class: 1.0, iou: 2.5, dfl: 0.5}}
  static_assigner:
    name: ATSSAssigner
    topk: 9
  assigner:
    name: TaskAlignedAssigner
    topk: 13
    alpha: 1.0
    beta: 6.0
  nms:
    name: MultiClassNMS
    nms_top_k: 1000
    keep_top_k: 100
    score_threshold: 0.01
    nms_threshold: 0.7
"""

FASTER_RCNN = """
architecture: FasterRCNN
norm_type: bn
num_classes: 4
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
  out_channel: 64
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
    pre_nms_top_n: 200
    post_nms_top_n: 100
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
  out_channel: 128
BBoxPostProcess:
  decode: RCNNBox
  nms:
    name: MultiClassNMS
    keep_top_k: 100
    score_threshold: 0.05
    nms_threshold: 0.5
"""

READER = f"""
EvalReader:
  sample_transforms:
  - Decode: {{}}
  - Resize: {{interp: 2, target_size: [{SIZE}, {SIZE}], keep_ratio: False}}
  - NormalizeImage: {{is_scale: true, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
  - Permute: {{}}
  batch_transforms:
  - PadBatch: {{pad_to_stride: 32}}
  batch_size: 1
"""


def build(tmp_path, text):
    """The model as tools/train.py builds it, in eval mode; the adapter's run view, its inputs and
    its trace context."""
    import paddle
    from ppdet.core.workspace import create, load_config

    sys.path.insert(0, SCRIPTS)
    import ppdet_tools  # the wheel fixes a user's PaddleDetection checkout has (R-CNN's 0-D RoI counts)

    ppdet_tools.fix_assigners_for_paddle3()
    ppdet_tools.fix_rpn_for_0d_shapes()
    from slim_plugins.adapters.ppdet import adapter

    path = tmp_path / "model.yml"
    path.write_text(text + READER)
    cfg = load_config(str(path))
    paddle.seed(0)
    model = create(cfg.architecture)
    model.eval()
    run = types.SimpleNamespace(adapter="ppdet", handle=types.SimpleNamespace(cfg=cfg, model=model), state={})
    inputs = adapter.forward_inputs(run, 1)
    assert list(inputs[0]["image"].shape) == [1, 3, SIZE, SIZE]
    return model, inputs, adapter.trace_context(run)


def analyse(model, inputs, context):
    from slim_plugins.plugins.prune.inventory import inventory
    from slim_plugins.plugins.prune.model import PrunableModel

    with context:
        prunable = PrunableModel(model, inputs, mode="eval")
    rows = {r.weight: r for r in inventory(prunable, inputs)}
    return prunable, rows


def prune_everything(prunable, inputs, ratio=0.5):
    """Every group at ``ratio``; PrunableModel.prune runs the eval forward and restores the model
    (naming the group) if it breaks."""
    groups = prunable.selected_groups()
    before = {n: list(p.shape) for n, p in prunable.model.named_parameters()}
    prunable.prune({g: ratio for g in groups}, check_inputs=inputs)
    after = {n: list(p.shape) for n, p in prunable.model.named_parameters()}
    return before, after


@needs_ppdet
def test_ppyoloe_plus_csp_stages_prune_and_the_head_says_why_not(tmp_path):
    import paddle

    model, inputs, context = build(tmp_path, PPYOLOE)
    prunable, rows = analyse(model, inputs, context)
    assert prunable.traced_modes[0] == "eval"
    # CSP stages: conv1 and conv2 feed a concat (then the ESE attention and conv3)
    for stage in range(4):
        for conv in ("conv1", "conv2"):
            assert rows[f"backbone.stages.{stage}.{conv}.conv.weight"].status == "prunable", stage
    assert rows["neck.fpn_stages.0.0.conv1.conv.weight"].status == "prunable"
    # the RepVGG branch (inside ``if self.alpha``) is pruned with the stage's channels it adds to
    repvgg = rows["backbone.stages.1.blocks.0.conv2.conv1.conv.weight"]
    assert repvgg.status == "follows" and repvgg.group == "backbone.stages.1.conv2.conv.weight", repvgg
    # head: classes reach NMS, the DFL bins a softmax; both fixed by the task
    assert "post-processing" in rows["yolo_head.pred_cls.0.weight"].reason
    assert "multiclass_nms" in rows["yolo_head.pred_cls.0.weight"].reason
    assert "softmax" in rows["yolo_head.pred_reg.0.weight"].reason
    assert rows["yolo_head.proj_conv.weight"].reason == "has a single output channel"
    assert len(prunable.groups) >= 40

    before, after = prune_everything(prunable, inputs)
    assert after["backbone.stages.1.conv2.conv.weight"][0] == before["backbone.stages.1.conv2.conv.weight"][0] // 2
    assert after["yolo_head.pred_cls.0.weight"][0] == 4
    with paddle.no_grad():
        out = model(*inputs)
    assert out["bbox"].shape[-1] == 6


@needs_ppdet
def test_faster_rcnn_fpn_outputs_prune_into_the_roi_head(tmp_path):
    import paddle

    model, inputs, context = build(tmp_path, FASTER_RCNN)
    prunable, rows = analyse(model, inputs, context)
    assert prunable.traced_modes[0] == "eval"
    # the FPN outputs (one channel set over all levels) reach RoIAlign, then a flatten into fc6
    fpn = [w for w in rows if w.startswith("neck.fpn_res") and w.endswith("_sum.weight")]
    assert len(fpn) == 4 and all(rows[w].status in ("prunable", "follows") for w in fpn), [rows[w] for w in fpn]
    group = prunable.groups[rows[fpn[0]].group]
    assert "bbox_head.head.fc6.weight" in group.members
    rpn_conv = "rpn_head.rpn_feat.rpn_conv.weight"
    assert rpn_conv in group.members or rows[rpn_conv].status == "prunable"
    assert rows["backbone.res2.res2a.branch2a.conv.weight"].status == "prunable"
    # the RPN's objectness and box deltas: fixed by the anchors, they reach proposal generation
    for name in ("rpn_head.rpn_rois_score.weight", "rpn_head.rpn_rois_delta.weight"):
        assert rows[name].status == "skipped" and rows[name].reason, rows[name]

    # tracing leaves every layer's forward as it was (Paddle 2.6's dy2st replaced the sublayers')
    assert not [n for n, layer in model.named_sublayers() if "forward" in vars(layer)]

    before, after = prune_everything(prunable, inputs)
    assert after["bbox_head.head.fc6.weight"][0] < before["bbox_head.head.fc6.weight"][0]
    assert after[fpn[0]][0] == before[fpn[0]][0] // 2
    with paddle.no_grad():
        out = model(*inputs)
    assert out["bbox"].shape[-1] == 6
    model.train()  # the pruned model trains: RPN and RoI head losses, backward
    batch = dict(inputs[0], gt_bbox=[paddle.to_tensor([[16.0, 16.0, 80.0, 96.0], [60.0, 40.0, 150.0, 120.0]])],
                 gt_class=[paddle.to_tensor([[1], [3]], dtype="int32")], is_crowd=[paddle.zeros([2, 1], "int32")])
    loss = model(batch)["loss"]
    loss.backward()
    assert bool(paddle.isfinite(loss))


@needs_ppdet
def test_faster_rcnn_flops_cut_counts_the_roi_head_at_the_proposal_budget(tmp_path):
    """The RoI head runs once per RPN proposal, and the weights decide how many proposals there
    are: the FLOPs cut of one plan must not depend on them. Weights A (freshly initialised) keep a
    few proposals unpruned and the full ``post_nms_top_n`` pruned; weights B (RPN deltas and scores
    zeroed: every anchor a proposal) keep ``post_nms_top_n`` both times. With the workload the ppdet
    adapter declares (``flops_rows``), both count the RoI head at ``post_nms_top_n`` rows."""
    import paddle

    from slim_plugins.adapters.ppdet import adapter
    from slim_plugins.plugins.prune import measure
    from slim_plugins.plugins.prune.model import PrunableModel

    model, inputs, context = build(tmp_path, FASTER_RCNN)
    run = types.SimpleNamespace(adapter="ppdet", handle=types.SimpleNamespace(model=model), state={})
    rows = adapter.flops_rows(run)
    assert rows == {"bbox_head": 100}  # the config's test_proposal post_nms_top_n
    with context:
        prunable = PrunableModel(model, inputs, mode="eval")
    plan = {g: 0.5 for g in prunable.selected_groups()}
    proposals = []
    fc6 = model.bbox_head.head.fc6
    handle = fc6.register_forward_post_hook(lambda _l, i, _o: proposals.append(int(i[0].shape[0])))

    def cut(workload):
        """(FLOPs cut of ``plan``, proposals unpruned, proposals pruned)."""
        proposals.clear()
        base = measure.flops(model, inputs, workload)
        applied = prunable.apply(plan)
        try:
            pruned = measure.flops(model, inputs, workload)
        finally:
            applied.restore()
        return 1 - pruned / base, proposals[0], proposals[-1]

    try:
        old_a, *counts_a = cut(None)  # the count as it was: the rows that ran
        workload_a = measure.Workload(rows)
        new_a, *_ = cut(workload_a)
        reference = measure.Workload()  # no declared count: the first measurement's rows are held
        cut(reference)
        for layer in (model.rpn_head.rpn_rois_delta, model.rpn_head.rpn_rois_score):
            layer.weight.set_value(paddle.zeros_like(layer.weight))
            layer.bias.set_value(paddle.zeros_like(layer.bias))
        old_b, *counts_b = cut(None)
        workload_b = measure.Workload(rows)
        new_b, *_ = cut(workload_b)
    finally:
        handle.remove()
    assert counts_b == [100, 100] and counts_a[0] < 100, (counts_a, counts_b)  # the weights change the count
    assert old_a != pytest.approx(old_b, abs=1e-3)  # counting the rows that ran: the cut depends on the weights
    assert new_a == new_b == old_b  # at post_nms_top_n rows: one cut, the one where every proposal is kept
    held = workload_a.describe()
    assert held["rows"]["bbox_head.head.fc6"] == 100 and held["measured"]["bbox_head.head.fc6"] == [counts_a[0], 100]
    assert not [n for n in held["rows"] if not n.startswith("bbox_head.")]  # the image part counted as it ran
    assert reference.describe()["rows"]["bbox_head.head.fc6"] == counts_a[0]


@needs_ppdet
def test_ppyoloe_plus_pruned_by_the_train_command_evaluates_and_exports_the_same(tmp_path):
    """PP-YOLOE+ through the unchanged train, eval and export commands, each in its own process:
    ``--plugin prune`` with fixed ratios on every group (the plugin traces inside the adapter's
    context: on Paddle 3, paddledet 2.6.0's NMS does not trace without it), then a fresh eval equal
    to the end of training, then an export whose RepVGG blocks fuse into pruned 3x3 convs
    (``convert_to_deploy`` builds them from ``ch_in``/``ch_out``) and that runs in Paddle Inference."""
    import json
    import re
    import subprocess

    import numpy as np

    from conftest import HERE, clean_env

    subprocess.run([sys.executable, os.path.join(SCRIPTS, "ppdet_shapes.py"), str(tmp_path / "data" / "shapes"),
                    "--train", "16", "--val", "8"], check=True, timeout=120)
    pico = open(os.path.join(HERE, "data", "ppdet", "picodet_s_shapes.yml")).read()
    model_sections = PPYOLOE.split("PPYOLOE:", 1)[1]
    text = (pico.split("PicoDet:", 1)[0].replace("architecture: PicoDet", "architecture: PPYOLOE")
            + "depth_mult: 0.33\nwidth_mult: 0.25\n\nPPYOLOE:" + model_sections + "\nLearningRate:"
            + pico.split("LearningRate:", 1)[1])
    # every box scored (a barely trained head scores below 0.01), so that eval prints an mAP to compare
    (tmp_path / "ppyoloe_shapes.yml").write_text(text.replace("score_threshold: 0.01", "score_threshold: 0.0"))

    def tools(*args):
        proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "ppdet_tools.py")] + list(args),
                              cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc

    tools("train", "-c", "ppyoloe_shapes.yml", "-o", "epoch=3", "--plugin", "prune", "--prune.ratios", "*=0.3")
    out = tmp_path / "output" / "ppyoloe_shapes"
    report = json.loads((out / "prune_report.json").read_text())
    rows = {row["weight"]: row for row in report["convs"]}
    assert rows["backbone.stages.0.conv1.conv.weight"]["status"] == "prunable"
    assert "post-processing" in rows["yolo_head.pred_cls.0.weight"]["reason"]
    cut = 1 - report["after"]["flops"] / report["before"]["flops"]
    assert cut > 0.3, cut  # every prunable group at 0.3, and its followers with it
    plan = json.loads((out / "model_final.prune.json").read_text())
    weights = str(out / "model_final")
    # eval in a fresh process: shapes rebuilt from the plan, the metric of the end of training
    proc = tools("eval", "-c", "ppyoloe_shapes.yml", "-o", f"weights={weights}")
    assert "rebuilt pruned shapes" in proc.stderr
    text = proc.stdout + proc.stderr
    ap = re.findall(r"Average Precision\s+\(AP\) @\[ IoU=0\.50:0\.95 \| area=\s*all \| maxDets=100 \] = ([-\d.]+)",
                    text)
    assert ap, text[-3000:]
    assert float(ap[-1]) == pytest.approx(report["after_training"]["metric"], abs=6e-4)
    # export, NMS included (on Paddle 3 through the adapter's PIR build of paddledet's NMS), and run
    tools("export", "-c", "ppyoloe_shapes.yml", "-o", f"weights={weights}", "--output_dir", "inference")
    exported = tmp_path / "inference" / "ppyoloe_shapes"
    size = 128
    feeds = {"image": np.random.RandomState(0).rand(1, 3, size, size).astype("float32"),
             "im_shape": np.array([[size, size]], "float32"), "scale_factor": np.ones([1, 2], "float32")}
    outputs = paddle_inference(exported, "model", feeds)
    assert outputs[0].ndim == 2 and outputs[0].shape[1] == 6 and np.isfinite(outputs[0]).all()  # NMS boxes
    # the RepVGG blocks' convs were pruned (so the export above fused pruned branches)
    repvgg = re.compile(r"backbone\.stages\.\d+\.blocks\.\d+\.conv2\.conv1\.conv\.weight")
    assert [n for n in plan["shapes"] if repvgg.fullmatch(n)]


def test_both_branches_of_a_tensor_conditional_are_coupled():
    """``if <parameter>:`` becomes a conditional op (old IR: conditional_block + select_input; PIR:
    if + cf.yield): the channels either branch gives are one set, and the convs inside are pruned
    with it (PP-YOLOE's RepVGG blocks). Without paddledet."""
    import paddle
    import paddle.nn as nn

    from slim_plugins.plugins.prune.model import PrunableModel

    class RepVGGLike(nn.Layer):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2D(3, 8, 3)
            self.conv1, self.conv2 = nn.Conv2D(8, 8, 3, padding=1), nn.Conv2D(8, 8, 1)
            self.alpha = self.create_parameter([1], default_initializer=nn.initializer.Constant(1.0))
            self.out = nn.Conv2D(8, 4, 1)

        def forward(self, x):
            x = self.stem(x)
            if self.alpha:
                y = self.conv1(x) + self.alpha * self.conv2(x)
            else:
                y = self.conv1(x) + self.conv2(x)
            return self.out(y)

    model = RepVGGLike()
    model.eval()
    prunable = PrunableModel(model, [1, 3, 16, 16], mode="eval")
    assert set(prunable.groups) == {"stem.weight", "conv1.weight"}, prunable.blocked
    assert "conv2.weight" in prunable.groups["conv1.weight"].followers
    prunable.prune({g: 0.5 for g in prunable.groups}, check_inputs=[paddle.ones([1, 3, 16, 16])])
    assert list(model.conv2.weight.shape) == [4, 4, 1, 1]
