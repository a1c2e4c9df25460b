"""Batch-norm statistics re-estimated for a pruned model before it is judged.

A pruned model's batch norms keep the running statistics of the unpruned one, and the layers
after a pruned conv see inputs of another distribution: its metric before fine-tuning then says
more about that stale normalisation than about what fine-tuning can recover. The first steps of
fine-tuning re-estimate those statistics; doing the same before evaluating a candidate plan
(forward passes with the batch norms normalising by batch statistics and averaging them into
their running ones, every other layer left in eval mode) ranks plans far closer to their
accuracy after fine-tuning (adaptive batch norm, as in EagleEye, Li et al. 2020).
"""
import contextlib
import warnings

import numpy as np
import paddle
import paddle.nn as nn

from ... import compat

# a batch norm whose input has fewer values per channel per batch than this (batch 1 after a
# global pool) keeps its statistics: a variance from a handful of values is no estimate
MIN_VALUES_PER_CHANNEL = 16


def batch_norms(model):
    """The batch norms whose running statistics a forward in training mode updates."""
    found = []
    for layer in model.sublayers(include_self=True):
        if not isinstance(layer, (nn.layer.norm._BatchNormBase, nn.BatchNorm)):
            continue
        if getattr(layer, "_use_global_stats", None) or not hasattr(layer, "_mean"):
            continue  # frozen: fine-tuning does not change it either
        if isinstance(layer, nn.SyncBatchNorm) and paddle.get_device() == "cpu":
            continue  # no CPU kernel (both versions): a model on the CPU cannot have run one
        found.append(layer)
    return found


@contextlib.contextmanager
def recalibrating(model):
    """Within the block, every forward of ``model`` re-estimates its batch norms' running
    statistics as the plain average over the batches seen (whatever the layers' momentum).
    The statistics are kept after the block; :func:`saved_statistics` puts them back."""
    layers = batch_norms(model)
    seen = {}
    handles = []

    def before(layer, inputs):
        x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        shape = list(x.shape)
        channels = shape[1] if len(shape) > 1 else 1
        if int(np.prod(shape)) // max(1, channels) < MIN_VALUES_PER_CHANNEL:
            return None
        n = seen.get(id(layer), 0)
        seen[id(layer)] = n + 1
        layer._calibrating = (layer.training, layer._momentum)
        layer.training = True
        layer._momentum = n / (n + 1.0)  # new = m * old + (1 - m) * batch: the running mean of the batches
        return None

    def after(layer, inputs, output):
        _put_back(layer)
        return None

    for layer in layers:
        handles.append(layer.register_forward_pre_hook(before))
        handles.append(layer.register_forward_post_hook(after))
    try:
        with warnings.catch_warnings():  # Paddle's "When training, we now always track global mean and variance."
            warnings.filterwarnings("ignore", message="When training")
            yield seen
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:  # a forward that raised between the hooks
            _put_back(layer)


def _put_back(layer):
    """The mode and momentum a batch norm had before :func:`recalibrating`'s pre-hook, if it ran."""
    state = layer.__dict__.pop("_calibrating", None)
    if state is not None:
        layer.training, layer._momentum = state


@contextlib.contextmanager
def saved_statistics(model):
    """Every batch norm's running mean and variance as they were on entry, put back on exit."""
    saved = [(layer, layer._mean.numpy().copy(), layer._variance.numpy().copy()) for layer in batch_norms(model)]
    try:
        yield
    finally:
        for layer, mean, variance in saved:
            compat.set_value(layer._mean, mean)
            compat.set_value(layer._variance, variance)


def recalibrated(model, evaluate, **kwargs):
    """``evaluate(**kwargs)`` after one ``evaluate(**kwargs)`` pass that re-estimates the batch
    norms' statistics; the statistics are put back afterwards. Without batch norms, one plain
    ``evaluate``."""
    if not batch_norms(model):
        return evaluate(**kwargs)
    with saved_statistics(model):
        with recalibrating(model):
            evaluate(**kwargs)
        return evaluate(**kwargs)
