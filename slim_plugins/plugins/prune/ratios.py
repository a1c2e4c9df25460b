"""Choosing pruning ratios: fixed, under a metric-loss budget, or for a FLOPs target."""
from slim_plugins.errors import OptionError


def ratio_under_budget(losses, budget):
    """The largest ratio whose loss is within ``budget``, interpolated linearly towards the next
    measured ratio (PaddleSlim's rule: the highest measured ratio within budget counts).

    :param losses: ``{ratio: loss}``.
    """
    points = sorted(losses.items())
    for i in range(len(points) - 1, -1, -1):
        r0, l0 = points[i]
        if l0 <= budget:
            if i == len(points) - 1:
                return float(r0)
            r1, l1 = points[i + 1]
            return float(r0 + (budget - l0) * (r1 - r0) / (l1 - l0))
    return 0.0


def ratios_by_loss(sensitivities, budget):
    """``{group: ratio}`` for a relative metric-loss budget; groups with ratio 0 are left out."""
    out = {}
    for group, losses in sensitivities.items():
        ratio = ratio_under_budget(losses, budget)
        if ratio > 0:
            out[group] = ratio
    return out


def align_ratios(ratios, channels, multiple):
    """Round the channels each group keeps to a multiple of ``multiple`` (at least one multiple)."""
    if not multiple or multiple <= 1:
        return dict(ratios)
    out = {}
    for group, ratio in ratios.items():
        n = channels[group]
        kept = round((1 - ratio) * n / multiple) * multiple
        kept = min(n, max(multiple, kept))
        out[group] = max(0.0, float(n - kept) / n)
    return {g: r for g, r in out.items() if r > 0}


def fixed_ratios(prunable, spec):
    """``{glob: ratio}`` on structured (or PaddleSlim global) names -> ``{group: ratio}``.

    The first matching glob wins for a group; a glob that matches nothing is an error.
    """
    out = {}
    for pattern, ratio in spec.items():
        if not 0 <= float(ratio) < 1:
            raise OptionError(f"ratio {ratio!r} for {pattern!r} is outside [0, 1)", plugin="prune",
                              hint="a ratio is the fraction of channels removed, e.g. 0.3")
        hits = prunable.resolve(pattern)
        if not hits:
            exists = pattern in prunable.global_of or pattern in prunable.structured
            what = ("is a parameter of the model but not the master conv weight of a prunable group"
                    if exists else "matches no prunable group")
            if not exists and not any(c in pattern for c in "*?["):
                what = "names no parameter of this model"
            raise OptionError(
                f"ratios: {pattern!r} {what}", plugin="prune",
                hint="prunable groups: " + ", ".join(list(prunable.groups)[:20])
                + (" ..." if len(prunable.groups) > 20 else "") + " (see `--prune.action show`)")
        for name in hits:
            out.setdefault(name, float(ratio))
    return {g: r for g, r in out.items() if r > 0}


def ratios_for_flops(sensitivities, target, flops_of, channels=None, align=None, tolerance=1e-3, overshoot=0.02):
    """Bisection over the loss budget until the pruned FLOPs fraction reaches ``target``.

    The budget may go below 0 (groups whose pruning raised the metric come in last but one by
    one). Groups with equal losses come in together; if that overshoots the target by more than
    ``overshoot``, the groups with the highest loss step back to their next lower measured ratio
    (or out) as long as the target still holds.

    :param flops_of: ``flops_of(ratios) -> pruned fraction`` (measured on the real model).
    :returns: ``(ratios, pruned_fraction, budget)``.
    """
    if not 0 < target < 1:
        raise OptionError(f"pruned_flops={target!r} is outside (0, 1)", plugin="prune",
                          hint="pruned_flops is the fraction of FLOPs to remove, e.g. 0.3")
    losses = [loss for group in sensitivities.values() for loss in group.values()]
    low, high = min([0.0] + losses) - tolerance, 1.0
    best = None
    for _ in range(40):
        budget = (low + high) / 2
        ratios = ratios_by_loss(sensitivities, budget)
        if align and channels:
            ratios = align_ratios(ratios, channels, align)
        pruned = flops_of(ratios)
        if pruned >= target:
            best = (ratios, pruned, budget)
            high = budget
        else:
            low = budget
        if high - low < tolerance:
            break
    if best is None:
        ratios = ratios_by_loss(sensitivities, high)
        raise OptionError(
            f"pruned_flops={target} cannot be reached: pruning every analysed group as far as the "
            f"sensitivities go removes {flops_of(ratios):.1%} of the FLOPs", plugin="prune",
            hint="lower pruned_flops, analyse more ratios (sen_ratios up to 0.9) or more groups")
    ratios, pruned, budget = best
    if pruned > target + overshoot:
        ratios, pruned = _step_back(sensitivities, ratios, pruned, target, flops_of, channels, align)
    return ratios, pruned, budget


def _loss_at(losses, ratio):
    """The loss measured at the largest analysed ratio not above ``ratio``."""
    below = [r for r in losses if r <= ratio + 1e-9]
    return losses[max(below)] if below else 0.0


def _step_back(sensitivities, ratios, pruned, target, flops_of, channels, align):
    """Walk groups from the highest loss down; each steps back one measured ratio if the pruned
    FLOPs fraction stays at or above ``target``. A group that could not step back is not tried
    again: the fraction only falls as others step back."""
    closed = set()
    changed = True
    while changed:
        changed = False
        for group in sorted(set(ratios) - closed, key=lambda g: (-_loss_at(sensitivities[g], ratios[g]), g)):
            if group not in ratios:  # alignment dropped it
                continue
            lower = [r for r in sensitivities[group] if r < ratios[group] - 1e-9]
            trial = dict(ratios)
            if lower:
                trial[group] = float(max(lower))
            else:
                del trial[group]
            if align and channels:
                trial = align_ratios(trial, channels, align)
            fraction = flops_of(trial)
            if fraction >= target:
                ratios, pruned, changed = trial, fraction, True
            else:
                closed.add(group)
    return ratios, pruned
