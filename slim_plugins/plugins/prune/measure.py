"""FLOPs and parameters of a dygraph model, measured with forward hooks (latency: latency.py)."""
import numpy as np
import paddle
import paddle.nn as nn


def _conv_flops(layer, out):
    weight = layer.weight
    kernel = int(np.prod(weight.shape[1:]))  # in/groups * kh * kw
    return int(np.prod(out.shape)) * (kernel + (1 if layer.bias is not None else 0))


def _linear_flops(layer, out):
    return int(np.prod(out.shape)) * int(layer.weight.shape[0])


def _norm_flops(layer, out):
    return 2 * int(np.prod(out.shape))


_COUNTERS = [
    ((nn.Conv1D, nn.Conv2D, nn.Conv3D, nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose), _conv_flops),
    ((nn.Linear,), _linear_flops),
    ((nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.BatchNorm, nn.LayerNorm, nn.GroupNorm), _norm_flops),
]


def flops_by_layer(model, inputs, workload=None):
    """Multiply-accumulate count per sublayer for one forward pass of ``inputs`` (batch 1 is
    the convention; the numbers are for the batch given). Layers called twice count twice.
    With a :class:`Workload`, layers whose row count depends on the data are counted at its rows."""
    counts = {}
    rows = {} if workload is not None else None
    forward_once(model, inputs, flops_hooks(model, counts, rows), mode="eval")
    return workload.count(counts, rows, _batch_of(inputs)) if workload is not None else counts


class Workload:
    """The rows FLOPs are counted at in layers whose row count depends on the data, so that every
    measurement of one model (before and after pruning, each plan a FLOPs target compares) counts
    the same work: a two-stage detector's RoI head runs once per proposal, and how many proposals
    the RPN keeps depends on the weights.

    A layer depends on the data when a call's input has a leading dimension other than the image
    batch's (e.g. ``[proposals, 256*7*7]``). Such a layer is counted per row times ``rows_per_image``
    (``{sublayer name prefix: rows per image per call}``, an adapter's declared count such as the
    RPN's ``post_nms_top_n``) where a prefix names it, else times the rows it processed in the first
    measurement (the reference). Every other layer is counted as measured, so models without such
    layers get the same numbers as without a workload.
    """

    def __init__(self, rows_per_image=None):
        self.rows_per_image = dict(rows_per_image or {})
        self.reference = None  # {layer: rows} of the first measurement
        self.dependent = set()  # layers a call of which had rows other than the image batch
        self.held = {}  # layer -> rows it is counted at, for layers whose measured rows differed (or declared)
        self.measured = {}  # layer -> [fewest, most] rows measured, for the data-dependent layers

    def _declared(self, name):
        for prefix, rows in self.rows_per_image.items():
            if name == prefix or name.startswith(prefix + "."):
                return int(rows)
        return None

    def count(self, counts, rows, batch):
        """``counts`` with each data-dependent layer's FLOPs scaled from the rows it processed
        (``rows``: ``{layer: (rows summed over calls, calls, the calls' leading dimensions)}``)
        to the workload's; ``batch`` is the image batch (None: nothing is scaled)."""
        if self.reference is None:
            self.reference = {name: r[0] for name, r in rows.items()}
        out = dict(counts)
        for name, (seen, calls, leading) in rows.items():
            declared = self._declared(name)
            if batch is None:
                continue
            if leading != {batch}:
                self.dependent.add(name)
            if name not in self.dependent and declared is None:
                continue
            low, high = self.measured.get(name, (seen, seen))
            self.measured[name] = [min(low, seen), max(high, seen)]
            target = calls * batch * declared if declared is not None else self.reference.get(name)
            if target is None or (seen == target and declared is None):
                continue
            if seen:  # a layer that ran on no rows has no per-row cost to scale: counted as 0
                out[name] = (counts[name] * target + seen // 2) // seen
            self.held[name] = target
        return out

    def describe(self):
        """What the report says of the counts held fixed (None: none was)."""
        if not self.held:
            return None
        return {"rows": dict(sorted(self.held.items())),
                "measured": {name: self.measured[name] for name in sorted(self.held)},
                "declared": dict(self.rows_per_image)}


def _batch_of(inputs):
    """The leading dimension of the first tensor in ``inputs`` (the image batch), or None."""
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    if isinstance(inputs, (list, tuple)):
        for item in inputs:
            found = _batch_of(item)
            if found is not None:
                return found
        return None
    shape = getattr(inputs, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else None


def flops_hooks(model, counts, rows=None):
    """Forward post-hooks adding each counted sublayer's FLOPs to ``counts`` (``{name: flops}``):
    any forward pass can measure FLOPs on the way (the inventory's call-count passes do). With
    ``rows``, each call's input rows too (:meth:`Workload.count`)."""
    handles = []

    def hook_for(name, fn):
        def hook(layer, inputs, output):
            out = output[0] if isinstance(output, (list, tuple)) else output
            counts[name] = counts.get(name, 0) + fn(layer, out)
            if rows is not None:
                shape = getattr(inputs[0] if isinstance(inputs, (list, tuple)) and inputs else inputs, "shape", None)
                n = int(shape[0]) if shape is not None and len(shape) else 1
                seen, calls, leading = rows.get(name, (0, 0, frozenset()))
                rows[name] = (seen + n, calls + 1, leading | {n})

        return hook

    for name, layer in model.named_sublayers():
        for types, fn in _COUNTERS:
            if isinstance(layer, types):
                handles.append(layer.register_forward_post_hook(hook_for(name, fn)))
                break
    return handles


def forward_once(model, inputs, handles=(), mode=None):
    """One forward pass without gradients, in ``mode`` ("eval", "train" or None: as it is); the
    hook ``handles`` are removed and the model's mode restored afterwards."""
    was_training = model.training
    if mode == "eval":
        model.eval()
    elif mode == "train":
        model.train()
    try:
        with paddle.no_grad():
            return model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train() if was_training else model.eval()


def flops(model, inputs, workload=None):
    return int(sum(flops_by_layer(model, inputs, workload).values()))


def parameters(model):
    """Trainable parameter count (BN running statistics excluded)."""
    return int(sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient))

