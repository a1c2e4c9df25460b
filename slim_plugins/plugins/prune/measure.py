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


def flops_by_layer(model, inputs):
    """Multiply-accumulate count per sublayer for one forward pass of ``inputs`` (batch 1 is
    the convention; the numbers are for the batch given). Layers called twice count twice."""
    counts = {}
    forward_once(model, inputs, flops_hooks(model, counts), mode="eval")
    return counts


def flops_hooks(model, counts):
    """Forward post-hooks adding each counted sublayer's FLOPs to ``counts`` (``{name: flops}``):
    any forward pass can measure FLOPs on the way (the inventory's call-count passes do)."""
    handles = []

    def hook_for(name, fn):
        def hook(layer, _inputs, output):
            out = output[0] if isinstance(output, (list, tuple)) else output
            counts[name] = counts.get(name, 0) + fn(layer, out)

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


def flops(model, inputs):
    return int(sum(flops_by_layer(model, inputs).values()))


def parameters(model):
    """Trainable parameter count (BN running statistics excluded)."""
    return int(sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient))

