"""Skip the part of the model a pruned group cannot change, during the sensitivity analysis.

Every evaluation of the analysis runs the same batches, and pruning one group changes only the
layers that own its parameters. Everything the forward pass computes before it first enters
such a layer is what the unpruned model computes. :class:`PrefixCache` keeps the outputs of
those calls (the largest sublayers that contain no pruned layer) from one evaluation and hands
them back in the next instead of running the sublayer again: the evaluation then computes only
from the first pruned layer on. In a network analysed group by group from input to output,
most of every evaluation is such a prefix.

It is exact, not approximate: a call is answered from the cache only when

- the sublayer contains no layer the pruning changed, and it is in eval mode;
- its first computed call left the attributes of it and its sublayers as they were (a layer that
  keeps something of its call, e.g. ``self.feats = x``, is always run);
- the forward pass has not yet entered a changed layer in this call of the model (so the inputs
  are those of the unpruned model), in dygraph;
- its inputs have the recorded shapes and fingerprint (a sum weighted by fixed random numbers:
  other batches, or the same batch in another order, miss and are computed);

and the answer is a copy, so an in-place operation downstream cannot alter the cache. Memory is
bounded (``limit_bytes``); entries an evaluation did not use are dropped after it.
"""
import contextlib

import numpy as np

DEFAULT_LIMIT_BYTES = 512 << 20
_PERIOD = 65521  # fingerprint weights repeat with this (prime) period


class _Unsupported(Exception):
    """An input or output the cache does not handle: the call runs as usual."""


class PrefixCache:
    """Outputs of unchanged sublayer calls, kept across the evaluations of one analysis."""

    def __init__(self, model, limit_bytes=DEFAULT_LIMIT_BYTES):
        self.model = model
        self.limit = int(limit_bytes)
        self.entries = {}  # (id(layer), fingerprint) -> (outputs, bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self.stateful = set()  # ids of layers whose call changed their attributes: never answered
        self._weights = {}  # place -> the fixed random weights of the fingerprint

    def clear(self):
        self.entries.clear()
        self._weights.clear()
        self.bytes = 0

    @contextlib.contextmanager
    def evaluating(self, changed_layers):
        """Serve and record calls during one evaluation of the model with ``changed_layers``
        (the layers whose parameters or attributes the pruning changed) pruned."""
        if self.limit <= 0:
            yield
            return
        changed = {id(layer) for layer in changed_layers}
        dirty = set(changed)  # changed layers and every layer that contains one
        layers = list(self.model.named_sublayers(include_self=True))
        for _name, layer in layers:
            if any(id(sub) in changed for sub in layer.sublayers(include_self=True)):
                dirty.add(id(layer))
        from slim_plugins.compat import restored_forwards

        state = {"tainted": False, "inside": 0, "used": set()}
        with restored_forwards(self.model):  # the wrappers below go again on the way out
            for _name, layer in layers:
                wrap = self._root if layer is self.model else self._call
                layer.__dict__["forward"] = wrap(layer, layer.forward, state, id(layer) in dirty,
                                                 id(layer) in changed)
            try:
                yield
            finally:
                for key in [k for k in self.entries if k not in state["used"]]:
                    self.bytes -= self.entries.pop(key)[1]

    # ------------------------------------------------------------------ wrappers
    @staticmethod
    def _root(layer, forward, state, dirty, changed):
        def call(*args, **kwargs):
            state["tainted"] = changed  # a new call of the model: its inputs are the batch's
            return forward(*args, **kwargs)

        return call

    def _call(self, layer, forward, state, dirty, changed):
        def call(*args, **kwargs):
            if changed:
                state["tainted"] = True
            if dirty or state["tainted"] or layer.training or id(layer) in self.stateful or not _dygraph():
                return forward(*args, **kwargs)
            try:
                key = (id(layer), self._fingerprint((args, kwargs)))
            except _Unsupported:
                return forward(*args, **kwargs)
            entry = self.entries.get(key)
            if entry is not None:
                self.hits += 1
                state["used"].add(key)
                return _copy(entry[0])
            outermost = state["inside"] == 0
            before = _attributes(layer) if outermost else None
            state["inside"] += 1
            try:
                out = forward(*args, **kwargs)
            finally:
                state["inside"] -= 1
            if outermost and not state["tainted"]:  # the outermost unchanged call
                self.misses += 1
                if _attributes(layer) == before:
                    self._record(key, out, state)
                else:
                    self.stateful.add(id(layer))
            return out

        return call

    def _record(self, key, out, state):
        try:
            size = _nbytes(out)
            if self.bytes + size > self.limit:
                return
            self.entries[key] = (_copy(out), size)
        except _Unsupported:
            return
        self.bytes += size
        state["used"].add(key)

    # ------------------------------------------------------------------ fingerprints
    def _fingerprint(self, value):
        import paddle

        if isinstance(value, paddle.Tensor):
            weights = self._weights.get(str(value.place))
            if weights is None:  # one period for every size: a prime, so that moving whole samples shows
                weights = np.random.RandomState(0).uniform(0.5, 1.5, _PERIOD).astype("float32")
                weights = self._weights[str(value.place)] = paddle.to_tensor(weights, place=value.place)
            flat = value.reshape([-1]).astype("float32")
            n = int(flat.shape[0])
            whole = n - n % _PERIOD
            total = 0.0
            if n > whole:
                total += float(paddle.sum(flat[whole:] * weights[:n - whole]))
            if whole:
                total += float(paddle.sum(flat[:whole].reshape([-1, _PERIOD]) * weights))
            return ("T", tuple(value.shape), str(value.dtype), total)
        if isinstance(value, (list, tuple)):
            return (type(value).__name__,) + tuple(self._fingerprint(v) for v in value)
        if isinstance(value, dict):
            return ("dict",) + tuple((str(k), self._fingerprint(v)) for k, v in value.items())
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise _Unsupported(type(value).__name__)


def _attributes(layer):
    """What a call could leave behind: every attribute of ``layer`` and its sublayers, by identity
    (a tensor assigned to a layer lands in its ``_buffers``: dicts are read one level deep)."""
    return [(id(sub), key, tuple((k, id(v)) for k, v in value.items()) if isinstance(value, dict) else id(value))
            for sub in layer.sublayers(include_self=True) for key, value in sub.__dict__.items()]


def _dygraph():
    import paddle

    return paddle.in_dynamic_mode()


def _copy(value):
    import paddle

    if isinstance(value, paddle.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise _Unsupported(type(value).__name__)


def _nbytes(value):
    import paddle

    if isinstance(value, paddle.Tensor):
        return int(np.prod(value.shape)) * value.element_size() if len(value.shape) else value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if value is None or isinstance(value, (bool, int, float, str)):
        return 0
    raise _Unsupported(type(value).__name__)


def changed_layers(prunable, applied):
    """The layers whose parameters or attributes ``applied`` (:meth:`PrunableModel.apply`) changed."""
    layers = {}
    for param in applied.values:
        layer = prunable.layer_of.get(param.name)
        if layer is not None:
            layers[id(layer)] = layer
    for layer, _attr, _old in applied.attrs:
        layers[id(layer)] = layer
    return list(layers.values())
