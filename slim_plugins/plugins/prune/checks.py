"""After a load: the checkpoint's tensors must have the model's shapes.

Every suite handles a tensor whose shape differs in its own way: ppdet skips it silently,
PaddleOCR warns and keeps random weights, PaddleX has silenced warnings, hapi raises. A pruned
checkpoint loaded without its plan (or with another one) looks exactly like that; this is the one
check, for every adapter, behind ``slim_after_load_weights``.
"""
import os
import sys

from slim_plugins.errors import ShapeMismatchError
from slim_plugins.plugins.prune.plan import attached, find_plan, plan_path


def weights_file(path):
    """The file a suite loads for ``path`` (a prefix, a ``.pdparams`` file, or a model folder),
    or None when there is none to read (a URL, a name the suite downloads)."""
    path = str(path)
    if "://" in path:
        return None
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.pdparams")
        return candidate if os.path.isfile(candidate) else None
    for candidate in (path, path + ".pdparams"):
        if os.path.isfile(candidate) and not candidate.endswith(".prune.json"):
            return candidate
    return None


def mismatches(model, file):
    """``[(name, checkpoint shape, model shape)]`` of the tensors both hold with different shapes."""
    import paddle

    saved = paddle.load(file, return_numpy=True)
    if not isinstance(saved, dict):
        return []
    found = []
    for name, tensor in model.state_dict().items():
        value = saved.get(name)
        if value is not None and hasattr(value, "shape") and list(value.shape) != list(tensor.shape):
            found.append((name, list(value.shape), list(tensor.shape)))
    return found


def pruning_involved(model, path, found):
    """Pretrained weights may differ on purpose (another class count changes a head's output
    channels): only a plan, or a conv whose input channels differ, says the shapes were pruned."""
    return (attached(model) is not None or find_plan(path) is not None
            or any(len(saved) == 4 and len(own) == 4 and saved[1] != own[1] for _n, saved, own in found))


def check_loaded(run, path, exact=True):
    """Raise :class:`ShapeMismatchError` (one line, the plan file named) when a tensor of the
    checkpoint at ``path`` does not fit ``run.model``; pretrained weights (``exact`` false) that
    differ without pruning only get a line saying what was not loaded."""
    model = run.model
    file = weights_file(path) if model is not None else None
    if file is None:
        return
    found = mismatches(model, file)
    if not found:
        return
    listing = "; ".join(f"{n}: checkpoint {a}, model {b}" for n, a, b in found[:5])
    listing += f"; ... ({len(found)} in all)" if len(found) > 5 else ""
    if not exact and not pruning_involved(model, path, found):
        sys.stderr.write(f"[slim-plugins {run.adapter}] {len(found)} tensors of {file} were not loaded "
                         f"(shape differs): {listing}\n")
        return
    plan = find_plan(path)
    where = plan_path(file)
    raise ShapeMismatchError(
        f"{file} does not fit the model: {listing}; the suite would go on with random weights there"
        + (f" (the pruning plan {plan} was applied)" if plan else f"; there is no pruning plan {where}"),
        plugin=run.adapter,
        hint=(f"{plan} belongs to other weights: use the plan saved with this checkpoint" if plan else
              f"a checkpoint pruned by slim-plugins loads with the plan saved beside it: put it at {where} "
              "(and do not block the prune plugin)") + "; otherwise use the config the checkpoint was trained with")
