"""PP-OCRv4 mobile det and rec, and CRNN-BiLSTM, through our pruning graph (issue 11).

Both models are built from the public configs' ``Architecture`` sections (written here) with
PaddleOCR 2.10's own ``build_model``, as ``tools/train.py`` builds them, and traced in the mode
and with the inputs the ppocr adapter gives. What PaddleSlim 2.6 could not do: PPLCNetV3's
``LearnableAffineBlock`` (``scale * x + bias``), the DB head's ``fix_nan`` (``isnan``/``where``),
convs feeding the FPN concat; and a multi-head recogniser's NRTR branch, which reads the backbone
only in training.
"""
import importlib.machinery
import os
import sys
from types import SimpleNamespace

import pytest


def _ppocr_root():
    from importlib import metadata

    try:
        dist = metadata.distribution("unstructured-paddleocr")
    except metadata.PackageNotFoundError:
        return None
    root = str(dist.locate_file("unstructured_paddleocr"))
    return root if os.path.isfile(os.path.join(root, "ppocr", "modeling", "architectures", "__init__.py")) else None


ROOT = _ppocr_root()
_MISSING = [m for m in ("pyclipper", "shapely", "skimage", "cv2")
            if importlib.machinery.PathFinder.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ROOT is None, reason="PaddleOCR's ppocr not importable: "
                                            "pip install --no-deps unstructured-paddleocr==2.10.0"),
    pytest.mark.skipif(bool(_MISSING), reason=f"PaddleOCR's modeling needs {', '.join(_MISSING)}"),
]

DET_SHAPE = [3, 128, 128]
REC_SHAPE = [3, 48, 160]
MAX_TEXT = 10

# configs/det/PP-OCRv4/PP-OCRv4_mobile_det.yml
DET_CONFIG = {
    "Global": {},
    "Architecture": {"model_type": "det", "algorithm": "DB", "Transform": None,
                     "Backbone": {"name": "PPLCNetV3", "scale": 0.75, "det": True},
                     "Neck": {"name": "RSEFPN", "out_channels": 96, "shortcut": True},
                     "Head": {"name": "DBHead", "k": 50, "fix_nan": True}},
    "Eval": {"dataset": {"transforms": [{"DetResizeForTest": {"image_shape": DET_SHAPE[1:]}}]}},
}
# configs/rec/PP-OCRv4/PP-OCRv4_mobile_rec.yml, with the default (36 character) dictionary
REC_CONFIG = {
    "Global": {"max_text_length": MAX_TEXT, "use_space_char": False},
    "Architecture": {"model_type": "rec", "algorithm": "SVTR_LCNet", "Transform": None,
                     "Backbone": {"name": "PPLCNetV3", "scale": 0.95},
                     "Head": {"name": "MultiHead", "head_list": [
                         {"CTCHead": {"Neck": {"name": "svtr", "dims": 120, "depth": 2, "hidden_dims": 120,
                                               "kernel_size": [1, 3], "use_guide": True},
                                      "Head": {"fc_decay": 0.00001}}},
                         {"NRTRHead": {"nrtr_dim": 384, "max_text_length": MAX_TEXT}}]}},
    "Loss": {"name": "MultiLoss", "loss_config_list": [{"CTCLoss": None}, {"NRTRLoss": None}]},
    "Eval": {"dataset": {"transforms": [{"RecResizeImg": {"image_shape": REC_SHAPE}}]}},
}

CRNN_SHAPE = [3, 32, 100]
# configs/rec/rec_mv3_none_bilstm_ctc.yml: the backbone's last conv -> Im2Seq -> 2-layer BiLSTM -> CTC
CRNN_CONFIG = {
    "Global": {"max_text_length": MAX_TEXT, "use_space_char": False},
    "Architecture": {"model_type": "rec", "algorithm": "CRNN", "Transform": None,
                     "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
                     "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 96},
                     "Head": {"name": "CTCHead", "fc_decay": 0}},
    "Eval": {"dataset": {"transforms": [{"RecResizeImg": {"image_shape": CRNN_SHAPE}}]}},
}


def _build(config):
    """``build_model(config["Architecture"])`` with tools/train.py's ``out_channels`` logic."""
    import copy

    import paddle

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from ppocr.modeling.architectures import build_model
    from ppocr.postprocess import build_post_process

    arch = copy.deepcopy(config["Architecture"])
    if arch["model_type"] == "rec":
        chars = len(build_post_process({"name": "CTCLabelDecode"}, config["Global"]).character)
        if arch["Head"]["name"] == "MultiHead":
            arch["Head"]["out_channels_list"] = {"CTCLabelDecode": chars, "NRTRLabelDecode": chars + 3}
        else:
            arch["Head"]["out_channels"] = chars
    paddle.seed(0)
    return build_model(arch)


def _traced(config):
    """The model and its PrunableModel, traced as the prune plugin does through the ppocr adapter."""
    from slim_plugins.adapters.ppocr import PaddleOCRAdapter
    from slim_plugins.plugins.prune.model import PrunableModel

    adapter = PaddleOCRAdapter()
    run = SimpleNamespace(handle=SimpleNamespace(config=config))
    inputs = adapter.trace_inputs(run) or [[1] + adapter.image_shape(config)]
    model = _build(config)
    return model, PrunableModel(model, inputs, mode=adapter.trace_mode(run))


def _train_step(model, image, targets=None):
    """Train-mode forward and backward: every conv gets a gradient of its (pruned) shape, and no
    parameter a gradient of another shape. (The affine blocks of PPLCNetV3's strided depthwise
    convs are never used, so not every parameter gets one.)"""
    model.train()
    out = model(image, data=targets) if targets is not None else model(image)
    values = list(out.values()) if isinstance(out, dict) else [out]
    loss = sum(v.mean() for v in values if "float" in str(v.dtype))
    loss.backward()
    wrong = [n for n, p in model.named_parameters()
             if p.grad is not None and list(p.grad.shape) != list(p.shape)]
    missing = [n for n, p in model.named_parameters() if len(p.shape) == 4 and not p.stop_gradient and p.grad is None]
    model.clear_gradients()
    assert not wrong and not missing, (wrong, missing)
    return out


def _prune_all(prunable, ratio):
    return prunable.apply({g: ratio for g in prunable.selected_groups()})


# ------------------------------------------------------------------ PP-OCRv4 mobile det
@pytest.fixture(scope="module")
def det():
    return _traced(DET_CONFIG)


def test_v4_det_traces_in_train_mode_with_fix_nan(det):
    _, prunable = det
    assert prunable.traced_modes[0] == "train"  # the threshold branch runs only in training
    assert len(prunable.groups) >= 25
    # fix_nan's isnan / where pass channels through: nothing is blocked for them
    assert not [r for r in prunable.blocked.values() if "isnan" in r or "where" in r]
    # only the one-channel DB outputs (conv-transposes) stay out, and they are no group
    assert set(prunable.blocked) <= {"head.binarize.conv3.weight", "head.thresh.conv3.weight"}, prunable.blocked


def test_v4_det_pplcnetv3_blocks_with_learnable_affine_are_prunable(det):
    model, prunable = det
    block = "backbone.blocks3.0.pw_conv"
    group = prunable.groups[f"{block}.conv_kxk.0.conv.weight"]
    # the reparameterisable branches are added, then LearnableAffineBlock scales: one group
    assert {f"{block}.conv_kxk.{i}.conv.weight" for i in range(1, 4)} <= set(group.followers)
    # the next depthwise conv and its own 1x1 branch follow the same channels
    assert "backbone.blocks3.1.dw_conv.conv_kxk.0.conv.weight" in group.followers
    assert model.backbone.blocks3[0].pw_conv.lab.scale.shape == [1]  # a scalar scale: no channel axis


def test_v4_det_neck_convs_feeding_concat_are_prunable(det):
    _, prunable = det
    for i in range(4):  # RSEFPN's inp_conv outputs are concatenated for the DB head
        assert f"neck.inp_conv.{i}.in_conv.weight" in prunable.groups
    # the head's first convs read the concat: its offsets take each inp_conv's channels
    group = prunable.groups["neck.inp_conv.0.in_conv.weight"]
    assert "head.binarize.conv1.weight" in group.members and "head.thresh.conv1.weight" in group.members


def test_v4_det_pruned_model_trains(det):
    import paddle

    model, prunable = det
    applied = _prune_all(prunable, 0.5)
    try:
        assert list(model.neck.inp_conv[0].in_conv.weight.shape)[0] == 12  # 24 at scale 0.75 -> half
        out = _train_step(model, paddle.rand([2] + DET_SHAPE))
        assert list(out["maps"].shape) == [2, 3] + DET_SHAPE[1:]
        model.eval()
        with paddle.no_grad():
            assert list(model(paddle.rand([1] + DET_SHAPE))["maps"].shape) == [1, 1] + DET_SHAPE[1:]
    finally:
        applied.restore()


def test_v4_det_pruned_rep_layers_fuse_for_export(det):
    """PaddleOCR's export runs ``rep()`` on PPLCNetV3's LearnableRepLayers, which builds the fused
    conv from the layer's own channel counts: the adapter syncs them to the pruned convs first."""
    import copy

    import paddle

    from slim_plugins.adapters.ppocr import _sync_rep_layer_channels

    model, prunable = det
    applied = _prune_all(prunable, 0.5)
    try:
        fused = copy.deepcopy(model)
        model.eval()
        fused.eval()
        image = paddle.rand([1] + DET_SHAPE)
        with paddle.no_grad():
            expected = model(image)["maps"].numpy()
            _sync_rep_layer_channels(fused)
            layers = [layer for layer in fused.sublayers() if hasattr(layer, "rep")]
            for layer in layers:
                layer.rep()
            assert layers and all(layer.is_repped for layer in layers)
            assert abs(fused(image)["maps"].numpy() - expected).max() < 1e-3
    finally:
        applied.restore()


# ------------------------------------------------------------------ PP-OCRv4 mobile rec
@pytest.fixture(scope="module")
def rec():
    return _traced(REC_CONFIG)


def _rec_targets(batch):
    """``batch[1:]`` of a training batch: label_ctc, label_gtc, length, valid_ratio."""
    import paddle

    return [paddle.randint(1, 30, [batch, MAX_TEXT]), paddle.randint(1, 30, [batch, MAX_TEXT]),
            paddle.full([batch], 4, dtype="int64"), paddle.ones([batch])]


def test_v4_rec_is_traced_in_train_mode_with_labels(rec):
    _, prunable = rec
    assert prunable.traced_modes[0] == "train"
    # the NRTR branch runs only in training: its input projection reads the last backbone
    # conv's channels, so it is pruned with that group
    last = [g for g in prunable.groups.values() if "head.before_gtc.1.fc.weight" in g.members]
    assert len(last) == 1 and last[0].name.startswith("backbone.")
    assert "head.ctc_encoder.encoder.conv1.conv.weight" in last[0].members  # the SVTR neck reads it too


def test_v4_rec_pplcnetv3_blocks_are_prunable(rec):
    _, prunable = rec
    assert "backbone.blocks3.0.pw_conv.conv_kxk.0.conv.weight" in prunable.groups
    assert "backbone.blocks6.0.se.conv1.weight" in prunable.groups  # SE's squeeze conv
    # SVTR attention (matmul of activations, layer_norm over tokens) stays inside the neck: the
    # neck's own convs are groups of their own
    assert "head.ctc_encoder.encoder.conv1.conv.weight" in prunable.groups


def test_v4_rec_pruned_model_trains_both_heads(rec):
    import paddle

    model, prunable = rec
    fc = model.head.before_gtc[1].fc.weight
    rows = fc.shape[0]
    applied = _prune_all(prunable, 0.5)
    try:
        # an eval-mode trace leaves NRTR's input projection at the unpruned width: matmul fails
        out = _train_step(model, paddle.rand([2] + REC_SHAPE), _rec_targets(2))
        assert set(out) >= {"ctc", "gtc"}
        assert fc.shape[0] < rows  # pruned with the last backbone conv
        model.eval()
        with paddle.no_grad():
            assert model(paddle.rand([1] + REC_SHAPE)).shape[0] == 1
    finally:
        applied.restore()


# ------------------------------------------------------------------ CRNN-MobileNetV3-BiLSTM
def test_crnn_last_conv_is_pruned_with_the_bilstms_input_weights():
    """Im2Seq (squeeze, transpose) keeps the channels on the last axis; the LSTM's first layer reads
    them through ``weight_ih_l0`` of each direction. Hidden sizes stay."""
    import paddle

    model, prunable = _traced(CRNN_CONFIG)
    assert not prunable.blocked, prunable.blocked  # nothing is excluded: every conv is a group
    group = prunable.groups["backbone.conv2.conv.weight"]
    lstm = "neck.encoder.lstm."
    assert {m for m in group.members if not m.startswith("backbone.")} == {
        lstm + "weight_ih_l0", lstm + "weight_ih_l0_reverse"}
    others = {n: list(p.shape) for n, p in model.named_parameters()
              if n.startswith(lstm) and not n.startswith(lstm + "weight_ih_l0")}
    applied = _prune_all(prunable, 0.5)
    try:
        kept = group.channels - round(group.channels * 0.5)
        assert list(model.neck.encoder.lstm.weight_ih_l0.shape) == [4 * 96, kept]
        assert list(model.neck.encoder.lstm.weight_ih_l0_reverse.shape) == [4 * 96, kept]
        assert {n: list(p.shape) for n, p in model.named_parameters() if n in others} == others
        _train_step(model, paddle.rand([2] + CRNN_SHAPE))
        model.eval()
        with paddle.no_grad():
            assert list(model(paddle.rand([1] + CRNN_SHAPE)).shape) == [1, CRNN_SHAPE[2] // 4, 37]
    finally:
        applied.restore()
