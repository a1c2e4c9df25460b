"""Join sensitivity files computed by separate processes, ranks or machines."""
from slim_plugins.errors import SensitivityFileError
from slim_plugins.plugins.prune.sensitivity import SensitivityFile

_IDENTITY = ("model_fingerprint", "weights_fingerprint", "criterion")


def merge_documents(docs, labels):
    """Merge sensitivity documents of one model/metric/criterion; groups and ratios are unioned."""
    first, first_label = docs[0], labels[0]
    merged = {k: v for k, v in first.items() if k != "groups"}
    merged["metric"] = dict(first["metric"])
    merged["groups"] = {}
    for doc, label in zip(docs, labels):
        for key in _IDENTITY:
            if doc.get(key) != first.get(key):
                raise SensitivityFileError(
                    f"cannot merge {label} into {first_label}: {key} differs "
                    f"({doc.get(key)!r} vs {first.get(key)!r})", plugin="prune",
                    hint="merge only files made on the same model, weights and criterion")
        for key in ("name", "max_batches"):
            if doc["metric"].get(key) != first["metric"].get(key):
                raise SensitivityFileError(
                    f"cannot merge {label} into {first_label}: metric {key} differs", plugin="prune")
        if doc.get("flops") and not merged.get("flops"):
            merged["flops"] = doc["flops"]
        if merged["metric"].get("baseline") is None:
            merged["metric"]["baseline"] = doc["metric"].get("baseline")
            merged["metric"]["seconds"] = doc["metric"].get("seconds")
        for name, group in doc["groups"].items():
            slot = merged["groups"].setdefault(name, {k: v for k, v in group.items() if k != "ratios"})
            slot.setdefault("ratios", {})
            for ratio, entry in group.get("ratios", {}).items():
                slot["ratios"].setdefault(ratio, entry)
    for group in merged["groups"].values():
        group["ratios"] = dict(sorted(group["ratios"].items(), key=lambda kv: float(kv[0])))
    return merged


def merge_files(inputs, out):
    docs = [SensitivityFile.load(p).data for p in inputs]
    merged = SensitivityFile(out, merge_documents(docs, list(inputs)))
    merged.save()
    return merged
