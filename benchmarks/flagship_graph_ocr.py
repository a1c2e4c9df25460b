"""PaddleOCR's flagship models through our pruning graph: one row per model.

    python benchmarks/flagship_graph_ocr.py [--models db_mv3,ppocrv4_det] [--paddleslim] [--json OUT]

Needs ``unstructured-paddleocr`` (PaddleOCR 2.10.0 with its training code). Each model is built
from an ``Architecture`` section written here after PaddleOCR's public configs, as
``tools/train.py`` builds it (``out_channels`` from the post-process's character set), traced in
the mode, at the size and with the inputs the ppocr adapter gives (train mode: DB's threshold
branch and a multi-head recogniser's SAR / NRTR branch, fed dummy labels, only run in training).

Per model: prunable groups, share of FLOPs in prunable convs, the time ``--prune.action show``
spends (trace + inventory), a summary of why the rest is skipped; then every group is pruned at
0.3 and at 0.9 and eval forward, train forward and backward must still run. ``--paddleslim``
adds PaddleSlim's groups and prunable share where its tracer works (the convs it can prune must
be a subset of ours).
"""
import argparse
import collections
import copy
import json
import os
import sys
import time
import traceback
from types import SimpleNamespace

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from ppocr_archs import mobile_det_arch, mobile_rec_arch  # noqa: E402  the PP-OCRv3/v4 sections the tests use

MAX_TEXT = 25
KEYS_V1 = "ppocr/utils/ppocr_keys_v1.txt"  # relative to PaddleOCR's root

# Architecture sections after PaddleOCR's public configs (configs/det, configs/rec)
MODELS = {
    # configs/det/det_mv3_db.yml
    "db_mv3": dict(
        arch={"model_type": "det", "algorithm": "DB", "Transform": None,
              "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
              "Neck": {"name": "DBFPN", "out_channels": 256},
              "Head": {"name": "DBHead", "k": 50}}),
    # configs/det/ch_PP-OCRv3/ch_PP-OCRv3_det_student.yml
    "ppocrv3_det": dict(arch=mobile_det_arch("v3")),
    # configs/det/PP-OCRv4/PP-OCRv4_mobile_det.yml
    "ppocrv4_det": dict(arch=mobile_det_arch("v4")),
    # configs/rec/rec_mv3_none_bilstm_ctc.yml: the last conv feeds Im2Seq and a 2-layer BiLSTM
    # (pruned with the LSTM's first-layer input weights since the graph's rnn rule: prunable
    # FLOPs 89.1% -> 96.0%, 29 -> 30 groups, on Paddle 2.6.2 and 3.3.1)
    "crnn_mv3": dict(
        arch={"model_type": "rec", "algorithm": "CRNN", "Transform": None,
              "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
              "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 96},
              "Head": {"name": "CTCHead", "fc_decay": 0}},
        image_shape=[3, 32, 100], dictionary=None, gtc=None),
    # configs/rec/PP-OCRv3/ch_PP-OCRv3_rec.yml
    "ppocrv3_rec": dict(arch=mobile_rec_arch("v3", MAX_TEXT), image_shape=[3, 48, 320], dictionary=KEYS_V1, gtc="SAR"),
    # configs/rec/PP-OCRv4/PP-OCRv4_mobile_rec.yml
    "ppocrv4_rec": dict(arch=mobile_rec_arch("v4", MAX_TEXT), image_shape=[3, 48, 320], dictionary=KEYS_V1,
                        gtc="NRTR"),
}


def ppocr_root():
    """PaddleOCR's folder in the installed ``unstructured-paddleocr``, put on ``sys.path``."""
    from importlib import metadata

    root = str(metadata.distribution("unstructured-paddleocr").locate_file("unstructured_paddleocr"))
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


def config_of(name, image_shape=None):
    """The config tools/train.py would see (the parts that decide the network and its input)."""
    spec = MODELS[name]
    arch = copy.deepcopy(spec["arch"])
    config = {"Global": {"use_space_char": True, "max_text_length": MAX_TEXT}, "Architecture": arch}
    if arch["model_type"] == "rec":
        root = ppocr_root()
        if spec.get("dictionary"):
            config["Global"]["character_dict_path"] = os.path.join(root, spec["dictionary"])
        config["PostProcess"] = {"name": "CTCLabelDecode"}
        shape = image_shape or spec["image_shape"]
        config["Eval"] = {"dataset": {"transforms": [{"RecResizeImg": {"image_shape": list(shape)}}]}}
        if spec.get("gtc"):
            losses = [{"CTCLoss": None}, {spec["gtc"] + "Loss": None}]
            config["Loss"] = {"name": "MultiLoss", "loss_config_list": losses}
    else:
        config["PostProcess"] = {"name": "DBPostProcess"}
        config["Eval"] = {"dataset": {"transforms": [{"DetResizeForTest": None}]}}
        if image_shape:
            config["Eval"]["dataset"]["transforms"] = [{"DetResizeForTest": {"image_shape": list(image_shape)}}]
    return config


def build(config):
    """``build_model(config["Architecture"])`` after tools/train.py's ``out_channels`` logic."""
    ppocr_root()
    from ppocr.modeling.architectures import build_model
    from ppocr.postprocess import build_post_process

    config = copy.deepcopy(config)
    arch = config["Architecture"]
    post = build_post_process(config["PostProcess"], config["Global"])
    if hasattr(post, "character"):
        char_num = len(post.character)
        if arch["Head"]["name"] == "MultiHead":
            out = {"CTCLabelDecode": char_num}
            gtc = list(config["Loss"]["loss_config_list"][1])[0]
            if gtc == "SARLoss":
                out["SARLabelDecode"] = char_num + 2
            elif gtc == "NRTRLoss":
                out["NRTRLabelDecode"] = char_num + 3
            arch["Head"]["out_channels_list"] = out
        else:
            arch["Head"]["out_channels"] = char_num
    return build_model(arch)


def adapter_view(config):
    """The ppocr adapter's trace mode, image shape and trace inputs (None: the image shape)."""
    from slim_plugins.adapters.ppocr import PaddleOCRAdapter

    adapter = PaddleOCRAdapter()
    run = SimpleNamespace(handle=SimpleNamespace(config=config))
    return adapter.trace_mode(run), adapter.image_shape(config), adapter.trace_inputs(run)


def train_targets(config, batch):
    """Labels a multi-head recogniser's training forward reads (``model(x, data=...)``)."""
    from slim_plugins.adapters.ppocr import PaddleOCRAdapter

    return PaddleOCRAdapter.train_targets(config, batch)


def _floats(out):
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        found = []
        for o in out:
            found.extend(_floats(o))
        return found
    if hasattr(out, "dtype") and "float" in str(out.dtype):
        return [out]
    return []


def check_runs(model, config, shape, batch=2):
    """Eval forward, train forward and backward on random images; raises on failure."""
    import paddle

    x = paddle.rand([batch] + list(shape))
    model.eval()
    with paddle.no_grad():
        model(x)
    model.train()
    targets = train_targets(config, batch)
    out = model(x, data=targets) if targets is not None else model(x)
    loss = sum(t.mean() for t in _floats(out))
    loss.backward()
    grads = [p for p in model.parameters() if not p.stop_gradient and p.grad is not None]
    model.clear_gradients()
    if not grads:
        raise RuntimeError("backward reached no parameter")


def short_reason(reason):
    """A skip reason without its layer-specific tail, for counting."""
    text = reason.split(": ", 1)[1] if reason.startswith("coupled with ") else reason
    return text.split(" at ")[0].split(" (conditional")[0][:90]


def ours(model, config, shape, mode, trace_inputs=None):
    import paddle

    from slim_plugins.plugins.prune.inventory import inventory
    from slim_plugins.plugins.prune.model import PrunableModel

    started = time.perf_counter()
    prunable = PrunableModel(model, trace_inputs or [[1] + list(shape)], mode=mode)
    traced = time.perf_counter() - started
    rows = inventory(prunable, [paddle.zeros([1] + list(shape))])
    show = time.perf_counter() - started
    share = sum(r.flops_share for r in rows if r.status in ("prunable", "follows"))
    reasons = collections.Counter(short_reason(r.reason) for r in rows if r.status == "skipped")
    result = {"groups": len(prunable.groups), "convs": len(rows), "share": share, "trace_s": traced, "show_s": show,
              "skipped": dict(reasons.most_common()), "modes": prunable.traced_modes,
              "prunable_convs": sorted(r.weight for r in rows if r.status in ("prunable", "follows")),
              "group_names": sorted(prunable.groups)}
    for ratio in (0.3, 0.9):
        applied = prunable.apply({g: ratio for g in prunable.selected_groups()})
        try:
            check_runs(model, config, shape)
            result[f"runs_{ratio}"] = "ok"
        except Exception as exc:  # noqa: BLE001  reported in the row
            result[f"runs_{ratio}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        finally:
            applied.restore()
    return result


def paddleslim(model, shape, mode):
    """PaddleSlim 2.6's groups and the FLOPs share of the convs they prune, or why it fails."""
    import paddle

    from slim_plugins import compat
    from slim_plugins.plugins.prune import measure

    pruner_cls = compat.import_paddleslim_pruners()["l1_norm"]
    structured = {p.name: n for n, p in model.named_parameters()}
    was_training = model.training
    started = time.perf_counter()
    try:
        model.train() if mode == "train" else model.eval()
        with compat.traceable_buffers(model), compat.tracing():
            # a tensor, not a shape: PaddleSlim builds a shape's example with assign, limited to 1M values
            pruner = pruner_cls(model, [paddle.zeros([1] + list(shape))])
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    finally:
        model.train() if was_training else model.eval()
    seconds = time.perf_counter() - started
    groups, convs = set(), set()
    for coll in pruner.collections:
        if coll.master_axis != 0 or coll.master_name not in structured or coll.master_name in pruner.skip_vars:
            continue
        groups.add(structured[coll.master_name])
        for d in coll.all_pruning_details():
            if d.axis == 0 and d.name in structured and len(model.state_dict()[structured[d.name]].shape) >= 3:
                convs.add(structured[d.name])
    per_layer = measure.flops_by_layer(model, [paddle.zeros([1] + list(shape))])
    total = sum(per_layer.values()) or 1
    share = sum(v for k, v in per_layer.items() if f"{k}.weight" in convs) / total
    return {"groups": len(groups), "share": share, "trace_s": seconds, "prunable_convs": sorted(convs)}


def run_model(name, with_paddleslim):
    import paddle

    config = config_of(name)
    mode, shape, trace_inputs = adapter_view(config)
    paddle.seed(0)
    model = build(config)
    row = {"model": name, "paddle": paddle.__version__, "mode": mode, "shape": shape}
    try:
        row.update(ours(model, config, shape, mode, trace_inputs))
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        traceback.print_exc()
    if with_paddleslim:  # PaddleSlim traced what it can: the image alone (eval mode for multi-head)
        slim = paddleslim(model, shape, "eval" if trace_inputs else mode)
        row["paddleslim"] = slim
        if "prunable_convs" in slim and "prunable_convs" in row:
            missing = sorted(set(slim["prunable_convs"]) - set(row["prunable_convs"]))
            row["superset"] = not missing
            row["missing_vs_paddleslim"] = missing
    return row


def print_row(row):
    slim = row.get("paddleslim") or {}
    slim_text = (f"{slim['share']:.0%} ({slim['groups']} groups)" if "share" in slim
                 else ("fails: " + slim["error"][:60]) if "error" in slim else "-")
    if "error" in row:
        print(f"{row['model']:<12} paddle {row['paddle']}: FAILS {row['error']}")
        return
    print(f"{row['model']:<12} paddle {row['paddle']} {row['mode']:<5} {'x'.join(map(str, row['shape']))}: "
          f"{row['groups']} groups, prunable {row['share']:.0%} (PaddleSlim {slim_text}), "
          f"show {row['show_s']:.1f}s (trace {row['trace_s']:.1f}s), "
          f"0.3: {row['runs_0.3']}, 0.9: {row['runs_0.9']}"
          + (f", superset of PaddleSlim: {row['superset']}" if "superset" in row else ""))
    for reason, n in row["skipped"].items():
        print(f"    skipped {n:>3}: {reason}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--paddleslim", action="store_true", help="compare with PaddleSlim's tracer")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import paddle

    from slim_plugins import compat

    paddle.set_device("cpu")
    compat.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        row = run_model(name.strip(), args.paddleslim)
        print_row(row)
        sys.stdout.flush()
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all("error" not in r and r.get("runs_0.3") == "ok" and r.get("runs_0.9") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
