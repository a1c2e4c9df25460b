"""The FLOPs a choice of ratios leaves, from data the sensitivity file carries (no model needed).

At analysis time each group is pruned alone once and every counted layer's FLOPs are measured:
a layer whose FLOPs fall from ``f`` to ``f'`` when a group keeps the fraction ``k`` of its
channels scales as ``k ** e`` with that group (``e = log(f'/f) / log(k)``: 1 for a conv whose
output or input channels the group prunes, about 2 where it prunes both). A plan's FLOPs are then
``sum(f * prod(k_g ** e_g))`` over layers: exact for convs, linears and norms up to the bias term.
``slim-plugins sens ratios`` uses it; the prune plugin itself measures the pruned model.
"""
import math

from slim_plugins.plugins.prune import measure

PROBE_RATIO = 0.5


def kept_fraction(channels, ratio):
    """Fraction of ``channels`` a group keeps at ``ratio`` (PaddleSlim's rounding)."""
    pruned = min(channels - 1, int(round(channels * float(ratio))))
    return (channels - pruned) / channels


def record(prunable, inputs, groups):
    """``{"total", "layers": {layer: flops}, "groups": {group: {layer: exponent}}}`` for one batch of
    ``inputs``; groups that cannot be pruned alone, or keep every channel at the probe ratio, are
    left out."""
    model = prunable.model
    base = measure.flops_by_layer(model, inputs)
    out = {"total": int(sum(base.values())), "probe_ratio": PROBE_RATIO, "layers": base, "groups": {}}
    for name in groups:
        k = kept_fraction(prunable.groups[name].channels, PROBE_RATIO)
        if k >= 1:
            continue
        try:
            applied = prunable.apply({name: PROBE_RATIO})
        except Exception:
            continue
        try:
            after = measure.flops_by_layer(model, inputs)
        except Exception:
            continue
        finally:
            applied.restore()
        out["groups"][name] = {layer: round(math.log(after[layer] / f) / math.log(k), 4)
                               for layer, f in base.items()
                               if f > 0 and after.get(layer, f) != f and after.get(layer, 0) > 0}
    return out


def estimate(data, channels, ratios):
    """FLOPs after ``ratios`` (``{group: ratio}``) from :func:`record`'s ``data``; ``channels`` maps
    each group to its channel count. Groups the data lacks count as unchanged."""
    factor = {layer: 1.0 for layer in data["layers"]}
    for group, ratio in ratios.items():
        exponents = data["groups"].get(group)
        if not exponents or not channels.get(group):
            continue
        k = kept_fraction(channels[group], ratio)
        for layer, e in exponents.items():
            factor[layer] *= k ** e
    return int(round(sum(f * factor[layer] for layer, f in data["layers"].items())))
