"""A pruned DB checkpoint and its plan made without PaddleSlim (which cannot trace DB on Paddle 3).

usage: ppocr_handmade_plan.py PPOCR_ROOT CONFIG CHECKPOINT OUT_PREFIX KEEP
Keeps the first KEEP output channels of DB's binarize head conv (its BN and the transposed
conv after it follow), writes OUT_PREFIX.pdparams and OUT_PREFIX.prune.json, and prints the
pruned shapes as JSON. The plan has the format the prune plugin writes, so tools/eval.py and
tools/export_model.py replay it like any other.
"""
import json
import sys
import zlib  # noqa: F401  before paddle (Paddle 2.6 exports an old zlib)

import paddle
import yaml

from slim_plugins import compat
from slim_plugins.plugins.prune.plan import PrunePlan
from slim_plugins.plugins.prune.sensitivity import architecture_fingerprint

root, config_file, checkpoint, out, keep = sys.argv[1:6]
keep = int(keep)
sys.path.insert(0, root)
from ppocr.modeling.architectures import build_model  # noqa: E402

with open(config_file) as f:
    config = yaml.safe_load(f)
model = build_model(config["Architecture"])
model.set_state_dict(paddle.load(checkpoint + ".pdparams"))
params = dict(model.named_parameters())
base_shapes = {n: list(p.shape) for n, p in params.items()}
base_fingerprint = architecture_fingerprint(model)
head = "head.binarize."
channels = params[head + "conv1.weight"].shape[0]
cuts = {head + "conv1.weight": 0, head + "conv_bn1.weight": 0, head + "conv_bn1.bias": 0,
        head + "conv_bn1._mean": 0, head + "conv_bn1._variance": 0, head + "conv2.weight": 0}
for name, axis in cuts.items():
    value = compat.numpy_of(params[name])
    compat.set_value(params[name], value.take(range(keep), axis=axis))
shapes = {n: list(p.shape) for n, p in model.named_parameters() if list(p.shape) != base_shapes[n]}
plan = PrunePlan(criterion="l1_norm", ratios={head + "conv1.weight": round(1 - keep / channels, 6)},
                 channels={head + "conv1.weight": [channels, keep]}, shapes=shapes, layer_groups={},
                 base_fingerprint=base_fingerprint, pruned_fingerprint=architecture_fingerprint(model))
paddle.save(model.state_dict(), out + ".pdparams")
plan.save(out + ".prune.json")
print(json.dumps(shapes))
