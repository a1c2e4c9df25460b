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


# ------------------------------------------------------------------ whole-model budget
def loss_at_ratio(losses, ratio):
    """A group's loss at ``ratio``, interpolated between its measured ratios (0 below the first)."""
    points = [(0.0, 0.0)] + sorted(losses.items())
    for (r0, l0), (r1, l1) in zip(points, points[1:]):
        if r0 <= ratio <= r1:
            return float(l0 + (ratio - r0) * (l1 - l0) / (r1 - r0)) if r1 > r0 else float(l1)
    return float(points[-1][1])


def _prepared(ratios, channels, align, limits=None):
    if limits:
        ratios = {g: min(r, limits.get(g, r)) for g, r in ratios.items()}
    ratios = {g: float(r) for g, r in ratios.items() if r > 1e-9}
    if align and channels:
        ratios = align_ratios(ratios, channels, align)
    return ratios


class _Evaluations:
    """``loss_of`` with a cache (equal plans after alignment cost nothing) and a log."""

    def __init__(self, loss_of):
        self.loss_of = loss_of
        self.log = []
        self.cache = {}

    def __call__(self, ratios, label):
        key = tuple(sorted((g, round(r, 6)) for g, r in ratios.items()))
        if key not in self.cache:
            self.cache[key] = 0.0 if not ratios else float(self.loss_of(ratios))
            self.log.append({"plan": label, "loss": self.cache[key], "groups": len(ratios)})
        return self.cache[key]


def ratio_within(losses, budget):
    """PaddleSlim's :func:`ratio_under_budget`, and below a group's first measured ratio the
    line from (0, 0) to it, so that a smaller budget always means a smaller, not a zero, ratio."""
    ratio = ratio_under_budget(losses, budget)
    if ratio > 0 or budget <= 0 or not losses:
        return ratio
    first, loss = min(losses.items())
    return float(first * min(1.0, budget / loss)) if loss > 0 else float(first)


def back_off(sensitivities, budget, loss_of, channels=None, align=None, max_evals=8, tolerance=0.02):
    """Per-group ratios for ``s * budget`` (PaddleSlim's at ``s = 1``; groups it leaves out stay
    out) with the largest common scale ``s`` in (0, 1] whose
    whole pruned model's measured relative loss is within ``budget`` (bisection on ``s``).

    Per-group losses add up: each group alone within the budget says little about all of them
    pruned together, and users read ``eval_metric_loss`` as a promise for the model. Scaling
    the budget, not the ratios, keeps insensitive groups pruned further than sensitive ones;
    no ratio exceeds ``s`` either, so a small enough ``s`` always holds.

    :param loss_of: ``loss_of(ratios) -> relative loss`` of the whole model pruned at ``ratios``.
    :returns: ``(ratios, loss, scale, evaluations)``; ``({}, 0.0, 0.0, ...)`` when no scale holds.
    """
    evaluate = _Evaluations(loss_of)

    start = _prepared(ratios_by_loss(sensitivities, budget), channels, align)
    # a loss of at least budget * ratio: the same plan at s = 1, and at s < 1 no ratio above s,
    # so groups whose measured losses are 0 or below (noise, an undertrained model) back off too
    envelope = {g: {r: max(loss, budget * r) for r, loss in sensitivities[g].items()} for g in start}

    def plan(scale):  # the groups the per-group rule prunes, each less
        return _prepared({g: ratio_within(envelope[g], scale * budget) for g in start}, channels, align)

    loss = evaluate(start, "s=1")
    if loss <= budget or not start:
        return start, loss, 1.0, evaluate.log
    low, high = 0.0, 1.0  # low: holds (the unpruned model), high: does not
    best = ({}, 0.0)
    while len(evaluate.log) < max_evals and high - low > tolerance:
        scale = (low + high) / 2
        trial = plan(scale)
        loss = evaluate(trial, f"s={scale:.3f}")
        if loss <= budget:
            low, best = scale, (trial, loss)
        else:
            high = scale
    return best[0], best[1], low, evaluate.log


def scale_to_flops(shape, target, flops_of, limits=None, channels=None, align=None, steps=20, tolerance=2e-3):
    """``{group: min(k * shape[group], limit)}`` with the smallest common ``k`` whose pruned
    FLOPs fraction reaches ``target`` (bisection on ``k``), or None if no ``k`` reaches it.

    :returns: ``(ratios, fraction)`` or None.
    """
    shape = {g: float(v) for g, v in shape.items() if v > 0}
    if not shape:
        return None
    limits = limits or {}
    top = max(limits.get(g, 0.9) / v for g, v in shape.items())
    full = _prepared({g: v * top for g, v in shape.items()}, channels, align, limits)
    fraction = flops_of(full)
    if fraction < target:
        return None
    low, high, best = 0.0, top, (full, fraction)
    for _ in range(steps):
        k = (low + high) / 2
        trial = _prepared({g: v * k for g, v in shape.items()}, channels, align, limits)
        fraction = flops_of(trial)
        if fraction >= target:
            high, best = k, (trial, fraction)
            if fraction - target < tolerance:
                break
        else:
            low = k
    return best


def plans_for_flops(sensitivities, target, flops_of, loss_of, limits=None, channels=None, align=None,
                    blends=(0.67, 0.33), margin=0.0):
    """Among plans that remove ``target`` of the FLOPs, the one with the lowest measured
    whole-model loss: the loss-budget bisection plan, a uniform ratio over the analysed groups,
    and ``blends`` of the two, each scaled to the target (so all remove about the same FLOPs).
    One ``loss_of`` per distinct plan (the workflow's re-estimates the batch norms' statistics
    first: see :mod:`.calibrate`). Another plan replaces the loss-budget plan only if its loss
    is lower by more than ``margin``.

    :returns: ``(ratios, fraction, loss, candidates)`` with ``candidates`` a list of
        ``{"plan", "fraction", "loss", "groups"}`` in the order tried.
    """
    by_budget, fraction, budget = ratios_for_flops(sensitivities, target, flops_of, channels, align)
    trimmed = scale_to_flops(by_budget, target, flops_of, limits, channels, align)  # no overshoot: equal FLOPs
    if trimmed is not None and trimmed[1] < fraction:
        by_budget, fraction = trimmed
    found = [("loss-budget bisection", by_budget, fraction)]
    uniform = scale_to_flops({g: 1.0 for g in sensitivities}, target, flops_of, limits, channels, align)
    if uniform is not None:
        found.append(("uniform", *uniform))
        for alpha in blends:
            shape = {g: alpha * by_budget.get(g, 0.0) + (1 - alpha) * uniform[0].get(g, 0.0)
                     for g in set(by_budget) | set(uniform[0])}
            blended = scale_to_flops(shape, target, flops_of, limits, channels, align)
            if blended is not None:
                found.append((f"blend {alpha:g} budget + {1 - alpha:g} uniform", *blended))
    evaluate = _Evaluations(loss_of)
    candidates = []
    for label, ratios, fraction in found:
        candidates.append({"plan": label, "fraction": fraction, "loss": evaluate(ratios, label),
                           "groups": len(ratios), "ratios": ratios})
    best = candidates[0]
    for c in candidates[1:]:
        if c["loss"] < best["loss"] and c["loss"] < candidates[0]["loss"] - margin:
            best = c
    return best["ratios"], best["fraction"], best["loss"], candidates
