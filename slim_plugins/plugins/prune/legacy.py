"""Import PaddleSlim / PaddleX sensitivity pickles without letting them run code.

Two shapes exist: the static-graph dict ``{param_name: {ratio: loss}}`` (also PaddleX's
``*.sensi.data``) and the dygraph ``paddleslim...filter_pruner.Status`` object. The unpickler
resolves only the few classes those files use; anything else is refused.
"""
import io
import pickle

from slim_plugins.errors import SensitivityFileError
from slim_plugins.plugins.prune.sensitivity import FORMAT, VERSION, ratio_key


class _Status:
    """Stand-in for PaddleSlim's ``Status``: plain attributes, no behaviour."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {})


def _numpy_scalar(dtype, data=None):
    import numpy as np

    return np.frombuffer(data, dtype=dtype)[0].item() if data is not None else 0.0


def _numpy_dtype(name, *_args):
    import numpy as np

    return np.dtype(name)


_ALLOWED = {
    ("paddleslim.dygraph.prune.filter_pruner", "Status"): _Status,
    ("paddleslim.dygraph.filter_pruner", "Status"): _Status,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise SensitivityFileError(
                f"refusing to load {module}.{name} from a sensitivity pickle (it could run code)",
                plugin="prune", hint="only PaddleSlim/PaddleX sensitivity files can be imported") from None


def loads_legacy(raw):
    """The object in a legacy pickle's bytes (only PaddleSlim/PaddleX classes resolve)."""
    return RestrictedUnpickler(io.BytesIO(raw)).load()


def load_legacy(path):
    """``{param_name: {ratio: loss}}`` from a legacy pickle."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SensitivityFileError(f"cannot read {path}: {exc.strerror}", plugin="prune",
                                   hint="give a PaddleSlim/PaddleX sensitivity pickle (*.sensi.data, *.pickle)",
                                   ) from None
    try:
        obj = loads_legacy(raw)
    except SensitivityFileError:
        raise
    except Exception as exc:
        raise SensitivityFileError(f"{path} is not a readable sensitivity pickle ({exc})", plugin="prune") from None
    if isinstance(obj, _Status):
        obj = getattr(obj, "sensitivies", None)
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise SensitivityFileError(f"{path} holds no {{param: {{ratio: loss}}}} mapping", plugin="prune")
    try:
        return {str(k): {float(r): float(l) for r, l in v.items()} for k, v in obj.items()}
    except (TypeError, ValueError) as exc:
        raise SensitivityFileError(f"{path} holds a loss or ratio that is not a number ({exc})",
                                   plugin="prune") from None


def to_sensitivity_json(losses, source):
    """A slim-plugins sensitivity document from legacy losses (names stay PaddleSlim's global
    names). The model is unknown: the first run that uses the file binds it to its model,
    weights, metric and criterion (:meth:`SensitivityFile.open`)."""
    groups = {}
    for name, ratios in losses.items():
        groups[name] = {"channels": None, "members": [], "legacy_name": True,
                        "ratios": {ratio_key(r): {"metric": None, "loss": l, "seconds": None}
                                   for r, l in sorted(ratios.items())}}
    return {"format": FORMAT, "version": VERSION, "model_fingerprint": None, "weights_fingerprint": None,
            "metric": {"name": None, "baseline": None, "seconds": None, "max_batches": None},
            "criterion": None, "imported_from": source, "groups": groups}


def imported_sen_file(path, save_dir):
    """``path`` itself when it is JSON (or missing: the caller says so); a PaddleSlim/PaddleX
    pickle (PaddleX 1.3's ``train(sensitivities_file=...)``) converted, safely, into
    ``save_dir/NAME.json``, which is returned."""
    import json
    import os

    from slim_plugins.plugins.prune.sensitivity import write_json_atomic

    if not os.path.isfile(path):
        return path
    try:
        with open(path) as f:
            json.load(f)
        return path
    except (UnicodeDecodeError, ValueError):
        pass
    out = os.path.join(save_dir, os.path.basename(path) + ".json")
    write_json_atomic(out, to_sensitivity_json(load_legacy(path), source=path))
    return out
