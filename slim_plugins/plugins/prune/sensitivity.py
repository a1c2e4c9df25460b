"""Sensitivity analysis: prune each group alone at each ratio, score with the suite's metric.

The file is JSON, rewritten atomically (temp file + rename) after every evaluation, so a crash
at any moment loses at most the evaluation in flight, and a restart recomputes nothing recorded.
Each rewrite holds a lock file and merges what is on disk first, so two processes writing one
file keep each other's records.
"""
import contextlib
import datetime
import hashlib
import json
import os
import tempfile
import time

import numpy as np

from slim_plugins.errors import FileError, SensitivityFileError, SlimPluginsError, exception_line
from slim_plugins.plugins.prune.prefix import DEFAULT_LIMIT_BYTES, PrefixCache, changed_layers
from slim_plugins.progress import Progress

FORMAT = "slim-plugins/sensitivity"
VERSION = 1
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def ratio_key(ratio):
    return f"{float(ratio):.4g}"


def architecture_fingerprint(model):
    """Structured names and shapes of every parameter."""
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(f"{name}:{list(param.shape)};".encode())
    return "sha256:" + h.hexdigest()[:32]


def weights_fingerprint(model):
    from slim_plugins import compat

    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(name.encode())
        h.update(np.ascontiguousarray(compat.numpy_of(param)).tobytes())
    return "sha256:" + h.hexdigest()[:32]


def relative_loss(baseline, metric):
    """Relative drop of a higher-is-better metric; 0 when the baseline is 0."""
    if baseline == 0:
        return 0.0 if metric >= 0 else 1.0
    return (baseline - metric) / abs(baseline)


def _temp_prefix(path):
    return "." + os.path.basename(path) + "."


def file_lock(path):
    """The lock every writer of ``path`` holds while it reads, merges and replaces the file."""
    from filelock import FileLock

    directory, name = os.path.split(os.path.abspath(path))
    _make_directory(directory, path)
    return FileLock(os.path.join(directory, "." + name + ".lock"))


def remove_stale_temporaries(path):
    """Temp files a killed writer of ``path`` left behind. Call with :func:`file_lock` held:
    writers make temp files only while they hold it, so any found then is an orphan."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _umask():
    try:  # Linux >= 4.7 tells it without changing it (os.umask would, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_directory(directory, path):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:  # FileExistsError / NotADirectoryError: a file where a folder must be
        raise FileError(f"cannot create the folder {directory} for {path}: {exc.strerror}",
                        hint="a file of that name is in the way, or the folder is not writable: choose another path") \
            from None


def write_json_atomic(path, data):
    """Replace ``path`` by ``data`` at once (temp file, fsync, rename), with the permissions a
    plain ``open(path, "w")`` would give (the umask), as the suites' own files have."""
    directory = os.path.dirname(os.path.abspath(path))
    _make_directory(directory, path)
    if os.path.isdir(path):
        raise FileError(f"{path} is a directory", hint="give a file path (e.g. .../sensitivities.json)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise FileError(f"cannot write {path}: {exc.strerror}", hint="choose a writable folder") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_pickle(raw):
    if raw[:1] == b"\x80":  # pickle protocol 2 and later
        return True
    try:  # protocols 0 and 1: does the safe unpickler read it?
        from slim_plugins.plugins.prune.legacy import loads_legacy

        loads_legacy(raw)
        return True
    except Exception:
        return False


def read_json(path, what, error=SensitivityFileError, plugin="prune", fix="point to the right file"):
    """The JSON document in ``path``; every reason it cannot be read is ``error`` naming the file
    and the fix (a PaddleSlim pickle: convert it with ``slim-plugins sens import``)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise error(f"{path} is a directory, not {what}", plugin=plugin, hint=fix) from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}", plugin=plugin, hint=fix) from None
    problem = None
    if raw[:1] != b"\x80":
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "is not a text file"
        except ValueError as exc:
            problem = f"is not valid JSON ({exc})"
    if _is_pickle(raw):
        stem = os.path.splitext(path)[0]
        raise error(f"{path} is a PaddleSlim/PaddleX pickle, not {what}", plugin=plugin,
                    hint=f"use slim-plugins sens import {path} {stem}.json, then give the .json")
    raise error(f"{path} {problem or 'is not valid JSON'}, so not {what}", plugin=plugin, hint=fix)


_OPTIONAL_TEXT = (str, type(None))


def _check_document(path, data):
    """Refuse a document that is not a complete sensitivity file of a version this reads."""
    fix = "delete it (or point prune.sen_file elsewhere) to start over"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SensitivityFileError(f"{path} is not a slim-plugins sensitivity file", plugin="prune",
                                   hint="import PaddleSlim pickles with `slim-plugins sens import`")
    expected = {"model_fingerprint": _OPTIONAL_TEXT, "weights_fingerprint": _OPTIONAL_TEXT,
                "criterion": _OPTIONAL_TEXT, "metric": dict, "groups": dict}
    missing = [k for k in ["version"] + list(expected) if k not in data]
    if missing:
        raise SensitivityFileError(f"{path} is incomplete: it has no {', '.join(missing)}", plugin="prune", hint=fix)
    version = data["version"]
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise SensitivityFileError(
            f"{path} is sensitivity file version {version!r}; this slim-plugins reads version {VERSION}",
            plugin="prune", hint="upgrade slim-plugins" if newer else fix)
    for key, kind in expected.items():
        if not isinstance(data[key], kind):
            raise SensitivityFileError(f"{path}: {key} is {type(data[key]).__name__} {data[key]!r}",
                                       plugin="prune", hint=fix)
    baseline = data["metric"].get("baseline")
    if baseline is not None and not isinstance(baseline, (int, float)):
        raise SensitivityFileError(f"{path}: metric.baseline is {baseline!r}, not a number", plugin="prune", hint=fix)
    for name, group in data["groups"].items():
        ratios = group.get("ratios") if isinstance(group, dict) else None
        if not isinstance(ratios, dict):
            raise SensitivityFileError(f"{path}: group {name} has no ratios mapping", plugin="prune", hint=fix)
        for ratio, entry in ratios.items():
            try:
                float(ratio)
                ok = isinstance(entry, dict) and isinstance(entry.get("loss"), (int, float))
            except ValueError:
                ok = False
            if not ok:
                raise SensitivityFileError(f"{path}: group {name} ratio {ratio!r} has no numeric loss",
                                           plugin="prune", hint=fix)


_IDENTITY = ("model_fingerprint", "weights_fingerprint", "criterion")


class SensitivityFile:
    """The sensitivity records of one model, metric and criterion."""

    def __init__(self, path, data):
        self.path = path
        self.data = data
        self.data.setdefault("metric", {}).setdefault("baseline", None)
        self.data.setdefault("groups", {})

    # ---------------------------------------------------------------- creation
    @classmethod
    def new(cls, path, *, model_fingerprint, weights, metric, criterion, max_batches):
        now = _now()
        data = {
            "format": FORMAT, "version": VERSION,
            "model_fingerprint": model_fingerprint, "weights_fingerprint": weights,
            "metric": {"name": metric, "baseline": None, "seconds": None, "max_batches": max_batches},
            "criterion": criterion, "created": now, "updated": now, "groups": {},
        }
        return cls(path, data)

    @classmethod
    def load(cls, path):
        data = read_json(path, "a sensitivity file", fix="delete it or point prune.sen_file elsewhere")
        _check_document(path, data)
        return cls(path, data)

    @classmethod
    def open(cls, path, *, model_fingerprint, weights, metric, criterion, max_batches):
        """Load ``path`` if it exists and belongs to this model/metric/criterion, else start one.

        A file that names no model yet (imported from a PaddleSlim pickle) is bound to this one:
        its fingerprints, metric and criterion are filled in and saved, so a later run on
        another model or other weights is refused."""
        with file_lock(path):
            remove_stale_temporaries(path)
            exists = os.path.exists(path)
        if not exists:
            return cls.new(path, model_fingerprint=model_fingerprint, weights=weights, metric=metric,
                           criterion=criterion, max_batches=max_batches)
        found = cls.load(path)
        found.check(model_fingerprint=model_fingerprint, weights=weights, metric=metric,
                    criterion=criterion, max_batches=max_batches)
        d = found.data
        identity = {"model_fingerprint": model_fingerprint, "weights_fingerprint": weights, "criterion": criterion}
        unbound = [k for k, v in identity.items() if d.get(k) is None] + (["metric"] if d["metric"].get("name") is None
                                                                         else [])
        if unbound:
            for key in unbound:
                if key == "metric":
                    d["metric"].update(name=metric, max_batches=max_batches)
                else:
                    d[key] = identity[key]
            d["bound"] = _now()
            found.save()
        return found

    def check(self, *, model_fingerprint, weights, metric, criterion, max_batches):
        d = self.data
        problems = []
        if d.get("model_fingerprint") not in (None, model_fingerprint):
            problems.append(f"it was made on another model architecture ({d['model_fingerprint']}, "
                            f"this model is {model_fingerprint})")
        elif d.get("weights_fingerprint") not in (None, weights):
            problems.append("it was made on other weights of this architecture")
        if d["metric"].get("name") not in (None, metric):
            problems.append(f"its metric is {d['metric']['name']!r}, this run's is {metric!r}")
        if d.get("criterion") not in (None, criterion):
            problems.append(f"its criterion is {d['criterion']!r}, this run's is {criterion!r}")
        if d["metric"].get("max_batches") != max_batches and d["metric"].get("baseline") is not None:
            problems.append(f"it evaluated {d['metric'].get('max_batches') or 'all'} batches, "
                            f"this run evaluates {max_batches or 'all'}")
        if problems:
            raise SensitivityFileError(
                f"refusing sensitivity file {self.path}: " + "; ".join(problems), plugin="prune",
                hint="use another prune.sen_file for this model, or delete the file to start over")

    # ---------------------------------------------------------------- content
    @property
    def baseline(self):
        return self.data["metric"].get("baseline")

    @property
    def metric_name(self):
        """The metric the file records (None in a file imported from PaddleSlim, until bound)."""
        return self.data["metric"].get("name")

    @property
    def criterion(self):
        return self.data.get("criterion")

    @property
    def groups(self):
        """``{group: record}`` (channels, members, legacy_name, ratios), the file's own dicts."""
        return self.data["groups"]

    @property
    def flops(self):
        """The per-layer FLOPs data `slim-plugins sens ratios` estimates with, or None."""
        return self.data.get("flops") or None

    @flops.setter
    def flops(self, value):
        self.data["flops"] = value

    def set_baseline(self, value, seconds):
        self.data["metric"]["baseline"] = float(value)
        self.data["metric"]["seconds"] = round(float(seconds), 4)

    def group(self, name, channels=None, members=None, legacy_name=None):
        """The record of group ``name``; ``legacy_name`` is the PaddleSlim global name of its master
        weight (``conv2d_3.w_0``), what ppdet's ``slim: Pruner`` and PaddleSlim's ``prune_vars`` take."""
        g = self.data["groups"].setdefault(name, {"channels": channels, "members": members or [], "ratios": {}})
        if channels is not None:
            g["channels"] = channels
        if legacy_name is not None:
            g["legacy_name"] = legacy_name
        return g

    def record(self, name, ratio, metric, seconds):
        entry = {"metric": float(metric), "loss": relative_loss(self.baseline, metric),
                 "seconds": round(float(seconds), 4)}
        self.group(name)["ratios"][ratio_key(ratio)] = entry
        return entry

    def has(self, name, ratio):
        return ratio_key(ratio) in self.data["groups"].get(name, {}).get("ratios", {})

    def losses(self, name=None):
        """``{ratio: loss}`` of one group, or ``{group: {ratio: loss}}`` of all."""
        if name is None:
            return {g: self.losses(g) for g in self.data["groups"]}
        ratios = self.data["groups"].get(name, {}).get("ratios", {})
        return dict(sorted((float(r), e["loss"]) for r, e in ratios.items()))

    def record_failure(self, name, ratio, error):
        """Pruning ``name`` at ``ratio`` broke the model: this ratio and every higher one are
        left out of the analysis (and so never chosen)."""
        self.group(name)["failed"] = {"ratio": ratio_key(ratio), "error": str(error)}

    def failure(self, name):
        """``{"ratio", "error"}`` of the ratio that broke ``name``, or None."""
        return self.data["groups"].get(name, {}).get("failed")

    def broken(self, name, ratio):
        """Is ``ratio`` at or above the ratio at which pruning ``name`` broke the model?"""
        failed = self.failure(name)
        return failed is not None and float(ratio) >= float(failed["ratio"])

    def capped(self, name, ratio, cap):
        """Is ``ratio`` past the first ratio of ``name`` whose loss exceeded ``cap``?"""
        if cap is None:
            return False
        return any(loss > cap and r < float(ratio) for r, loss in self.losses(name).items())

    def adopt_legacy_names(self, structured):
        """Rename groups imported under PaddleSlim global names (``conv2d_3.w_0``) to this
        model's structured names. Global names depend on layer creation order: only a model
        built the same way as the one analysed maps correctly."""
        groups = self.data["groups"]
        # imported groups carry legacy_name True (older imports) or their own name
        for name in [n for n, g in groups.items() if g.get("legacy_name") in (True, n)]:
            if name in structured:
                entry = groups.pop(name)
                entry.pop("legacy_name", None)
                groups[structured[name]] = entry

    def save(self):
        """Write the records, after merging in those another process wrote to the same file
        (under the file's lock, so neither loses records or the other's temp file)."""
        with file_lock(self.path):
            if os.path.exists(self.path):
                self._merge_from_disk()
            self.data["updated"] = _now()
            write_json_atomic(self.path, self.data)

    def _merge_from_disk(self):
        try:
            disk = SensitivityFile.load(self.path).data
        except SensitivityFileError:
            return  # not ours (or broken): replaced, as a first save does
        d = self.data
        for key in _IDENTITY:
            if disk.get(key) not in (None, d.get(key)) and d.get(key) is not None:
                raise SensitivityFileError(
                    f"another process wrote {self.path} for another model, weights or criterion meanwhile "
                    f"({key} {disk.get(key)!r}, this run's {d.get(key)!r})", plugin="prune",
                    hint="give each model its own prune.sen_file")
        if d["metric"].get("baseline") is None and disk["metric"].get("baseline") is not None:
            d["metric"]["baseline"] = disk["metric"]["baseline"]
            d["metric"]["seconds"] = disk["metric"].get("seconds")
        for name, group in disk["groups"].items():
            if name not in d["groups"] and group.get("legacy_name"):
                continue  # renamed to a structured name here (adopt_legacy_names)
            mine = d["groups"].setdefault(name, {k: v for k, v in group.items() if k != "ratios"})
            ratios = mine.setdefault("ratios", {})
            for ratio, entry in group["ratios"].items():
                ratios.setdefault(ratio, entry)
            if group.get("failed") and not mine.get("failed"):
                mine["failed"] = group["failed"]


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def legacy_names(prunable):
    """Structured parameter name -> Paddle's global name (PaddleSlim's name for it)."""
    return {sname: param.name for sname, param in prunable.model.named_parameters()}


def plan_work(sfile, groups, ratios, cap):
    """(group, ratio) pairs still to evaluate, ratios ascending within a group."""
    work = []
    for name in groups:
        for ratio in sorted(ratios):
            if not sfile.has(name, ratio) and not _skipped(sfile, name, ratio, cap):
                work.append((name, ratio))
    return work


def _skipped(sfile, name, ratio, cap):
    return sfile.broken(name, ratio) or sfile.capped(name, ratio, cap)


class GroupBreaksModel(Exception):
    """Pruning one group made PaddleSlim or the pruned model's evaluation fail."""


def evaluate_group(prunable, metric, name, ratio, max_batches, cache=None):
    """The metric with ``name`` pruned at ``ratio``; the model is restored afterwards. With a
    :class:`~slim_plugins.plugins.prune.prefix.PrefixCache`, the calls before the group's first
    layer are answered from earlier evaluations (the same metric, computed faster).

    Raises :class:`GroupBreaksModel` when PaddleSlim cannot prune the group or the pruned model
    fails to evaluate (e.g. a head conv whose channel count a later reshape relies on).
    """
    try:
        applied = prunable.apply({name: ratio})
    except Exception as exc:
        raise GroupBreaksModel(exception_line(exc)) from exc
    try:
        start = time.perf_counter()
        with cache.evaluating(changed_layers(prunable, applied)) if cache else contextlib.nullcontext():
            value = metric(max_batches=max_batches)
        return value, time.perf_counter() - start
    except SlimPluginsError:  # the evaluation itself is unusable (e.g. it saw no batch): not a record
        raise
    except Exception as exc:
        raise GroupBreaksModel(exception_line(exc)) from exc
    finally:
        applied.restore()


def _baseline(sfile, metric, max_batches, check_baseline):
    """Evaluate the unpruned model unless ``sfile`` has its metric; ``check_baseline(value)`` may
    refuse it (e.g. an untrained model) before it is written."""
    if sfile.baseline is not None:
        if check_baseline:
            check_baseline(sfile.baseline)
        return
    start = time.perf_counter()
    value = metric(max_batches=max_batches)
    seconds = time.perf_counter() - start
    if check_baseline:
        check_baseline(value)
    sfile.set_baseline(value, seconds)
    sfile.save()


def analyze(prunable, metric, sfile, *, groups, ratios=DEFAULT_RATIOS, cap=None, max_batches=None,
            show_progress=True, check_baseline=None, search=False, cache_bytes=DEFAULT_LIMIT_BYTES):
    """Fill ``sfile`` for ``groups`` x ``ratios``, one evaluation at a time, in this process.

    Ratios of a group above the first one whose loss exceeds ``cap`` are skipped. With
    ``search`` (and a ``cap``), each group is searched for its cap crossing instead: see
    :func:`search_crossing`. ``check_baseline(value)`` may raise to refuse the unpruned model's
    metric before anything is analysed or written. Up to ``cache_bytes`` of sublayer outputs
    that a pruned group cannot change are reused across evaluations (0: none; see
    :mod:`~slim_plugins.plugins.prune.prefix`).
    """
    _start_analysis(prunable, metric, sfile, groups, max_batches, check_baseline)
    cache = PrefixCache(prunable.model, cache_bytes)
    try:
        _analyze(prunable, metric, sfile, groups, ratios, cap, max_batches, show_progress, search, cache)
    finally:
        cache.clear()
    return sfile


def _analyze(prunable, metric, sfile, groups, ratios, cap, max_batches, show_progress, search, cache):
    if search and cap is not None:
        most = min(len(ratios), crossing_evaluations(len(ratios)))  # per group: the total never grows
        progress = Progress(len(groups) * most, "sensitivity (crossing search)", enabled=show_progress,
                            skipped_by="the search")
        found = []
        for name in groups:  # groups of one model tend to cross alike: the median so far is the first guess
            prior = sorted(found)[(len(found) - 1) // 2] if found else None
            found.append(search_crossing(prunable, metric, sfile, name, ratios, cap, max_batches, progress,
                                         prior=prior, cache=cache))
        return
    work = plan_work(sfile, groups, ratios, cap)
    progress = Progress(len(work), "sensitivity", enabled=show_progress)
    for name, ratio in work:
        if _skipped(sfile, name, ratio, cap):
            progress.skip()
            continue
        _evaluate(prunable, metric, sfile, name, ratio, max_batches, progress, "group skipped", cache)


def _evaluate(prunable, metric, sfile, name, ratio, max_batches, progress, if_broken, cache=None):
    """Evaluate group ``name`` pruned at ``ratio`` into the file; False when that breaks the model
    (recorded as a failure, with ``if_broken`` saying what follows)."""
    try:
        value, seconds = evaluate_group(prunable, metric, name, ratio, max_batches, cache)
    except GroupBreaksModel as exc:
        _record_broken(sfile, progress, name, ratio, exc, if_broken)
        return False
    _record_result(sfile, progress, metric, name, ratio, value, seconds)
    return True


def _start_analysis(prunable, metric, sfile, groups, max_batches, check_baseline):
    """Record each group's channels, members and PaddleSlim name, then the baseline metric."""
    legacy = legacy_names(prunable)
    for name in groups:
        g = prunable.groups[name]
        sfile.group(name, channels=g.channels, members=g.members, legacy_name=legacy.get(name))
    _baseline(sfile, metric, max_batches, check_baseline)


def _record_result(sfile, progress, metric, name, ratio, value, seconds):
    """One evaluation into the file (saved at once) and the progress line."""
    entry = sfile.record(name, ratio, value, seconds)
    sfile.save()
    if progress:
        progress.step(f"{name} @ {ratio:g}: {metric.name} {metric.format(value)} loss {entry['loss']:+.4f}")
    return entry


def _record_broken(sfile, progress, name, ratio, error, consequence):
    """A ratio that breaks the model into the file (saved at once) and the progress line."""
    sfile.record_failure(name, ratio, error)
    sfile.save()
    if progress:
        progress.step(f"{name} @ {ratio:g}: breaks the model, {consequence} ({error})")


NEAR, NEXT_STEPS = 0.3, 3  # simulated on measured curves (small CNNs, MobileNetV2-style): fewest evaluations


def crossing_evaluations(n):
    """The most evaluations :func:`search_crossing` makes on ``n`` ratios: ceil(log2(n + 1)),
    plus two for the guess, plus ``NEXT_STEPS`` steps to the next ratio near the cap."""
    return max(1, int(n).bit_length()) + 2 + NEXT_STEPS if n else 0


def _loss(sfile, name, ratio):
    return sfile.data["groups"][name]["ratios"][ratio_key(ratio)]["loss"]


def search_crossing(prunable, metric, sfile, name, ratios, cap, max_batches=None, progress=None, prior=None,
                    cache=None):
    """Bisection over the sorted ``ratios`` of one group for the largest ratio whose loss is
    within ``cap``, assuming the loss grows with the ratio: about log2(n) evaluations instead
    of up to n. With ``prior`` (a guess of the crossing, e.g. other groups' crossings) the
    first probes are the ratios just above and at the guess; then probes lean low (tight
    budgets cross early) and, once a measured loss is near the cap, step to the next ratio (at
    most ``NEXT_STEPS`` times). Both ratios around the crossing are measured, so the ratio
    chosen for ``cap`` (interpolated between them) is the one an every-ratio scan chooses.
    Recorded points are read from the file, not evaluated again; a ratio that breaks the model
    counts as over the cap.

    :returns: the largest measured ratio within ``cap`` (0.0 if none).
    """
    grid = sorted(float(r) for r in ratios)
    low, high = -1, len(grid)  # grid[low] within the cap (-1: ratio 0), grid[high] over it
    guess = None if prior is None else max([i for i, r in enumerate(grid) if r <= prior + 1e-9] or [-1])
    evaluated = steps = probes = 0
    while high - low > 1:
        # the lowest probe that keeps the worst case at ceil(log2(options)): tight budgets cross
        # at low ratios, and there this costs about what a scan from the bottom costs
        left = (high - low - 1).bit_length() - 1 if high - low > 2 else 0
        mid = max(low + 1, high - (1 << left))
        if probes == 0 and guess is not None:
            mid = min(guess + 1, len(grid) - 1)
        elif probes == 1 and guess is not None and guess >= 0 and high == guess + 1 and low < guess:
            mid = guess
        elif low >= 0 and steps < NEXT_STEPS and mid != low + 1 and _loss(sfile, name, grid[low]) > NEAR * cap:
            mid, steps = low + 1, steps + 1  # already near the cap: the crossing is likely next
        probes += 1
        ratio = grid[mid]
        if sfile.broken(name, ratio):
            high = mid
            continue
        if not sfile.has(name, ratio):
            evaluated += 1
            if not _evaluate(prunable, metric, sfile, name, ratio, max_batches, progress, "treated as over the cap",
                             cache):
                high = mid
                continue
        if _loss(sfile, name, ratio) <= cap:
            low = mid
        else:
            high = mid
    if progress:
        progress.skip(max(0, min(len(grid), crossing_evaluations(len(grid))) - evaluated))
    return grid[low] if low >= 0 else 0.0


def cap_for_flops(sfile, groups, ratios, target, flops_of, run_analysis):
    """A loss cap that bounds a ``pruned_flops`` analysis. Every group is evaluated at the
    analysed ratio at or above the uniform ratio that reaches ``target``; the loss-budget
    bisection never needs a budget above the largest of those losses (at that budget every
    group is pruned at least that far, so the target is met).

    :param run_analysis: ``run_analysis(ratios=[r], cap=None)`` fills ``sfile`` for ``groups``.
    :returns: ``(cap, uniform_ratio, probed_ratio)``, or None when even the largest ratio for
        every group misses ``target`` (the choice then says why).
    """
    from slim_plugins.plugins.prune.ratios import scale_to_flops

    grid = sorted(float(r) for r in ratios)
    found = scale_to_flops({g: 1.0 for g in groups}, target, flops_of, limits={g: grid[-1] for g in groups})
    if found is None:
        return None
    uniform = max(found[0].values())
    probe = next((r for r in grid if r >= uniform - 1e-9), grid[-1])
    run_analysis(ratios=[probe], cap=None)
    losses = [entry["loss"] for g in groups
              for entry in [sfile.data["groups"].get(g, {}).get("ratios", {}).get(ratio_key(probe))] if entry]
    if not losses:
        return None
    return max(max(losses), 0.0), uniform, probe


# -------------------------------------------------------------------------------- in parallel
STALL_FACTOR = 20  # default worker stall timeout: this many baseline evaluations ...
MIN_STALL_SECONDS = 300  # ... and never less than this


def _pin_inherited_loaders():
    """Paddle DataLoader iterators this forked child inherited. Each holds a reader thread that
    only exists in the parent; freeing one here (Paddle frees the previous iterator whenever a new
    one is made) joins or closes that thread's queue forever. Keeping a reference to every
    inherited iterator means the child never frees them: it ends with ``os._exit``."""
    import gc

    try:
        from paddle.io.dataloader.dataloader_iter import _DataLoaderIterBase
    except ImportError:
        return []
    return [o for o in gc.get_objects() if isinstance(o, _DataLoaderIterBase)]


def _worker_loop(conn, prunable, metric, cap, max_batches, threads):
    """Forked worker: evaluate the groups the parent sends, report each result.

    Says which (group, ratio) it starts before each evaluation, so that the parent can name it
    if this process dies or stalls; a slim-plugins error (e.g. an evaluation that saw no batch)
    goes to the parent as it is, any other failure of the worker itself as one line."""
    import signal

    try:  # die with the parent (SIGKILL included) instead of computing for nobody
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except Exception:
        pass
    from slim_plugins import compat
    from slim_plugins.errors import SlimPluginsError

    pinned = _pin_inherited_loaders()  # noqa: F841  (kept alive until os._exit)
    if threads:
        compat.set_num_threads(threads)
    local = SensitivityFile(None, {"metric": {"baseline": None}, "groups": {}})
    cache = PrefixCache(prunable.model)  # this worker's own: its groups follow each other too
    name = ratio = None
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            name, ratios, baseline, done = task
            local.data["metric"]["baseline"] = baseline
            local.data["groups"][name] = {"ratios": done}
            for ratio in ratios:
                if _skipped(local, name, ratio, cap):
                    conn.send(("skip", name, ratio))
                    continue
                conn.send(("start", name, ratio))
                try:
                    value, seconds = evaluate_group(prunable, metric, name, ratio, max_batches, cache)
                except GroupBreaksModel as exc:
                    local.record_failure(name, ratio, exc)
                    conn.send(("failed", name, ratio, str(exc)))
                    continue
                local.record(name, ratio, value, seconds)
                conn.send(("result", name, ratio, value, seconds))
            conn.send(("done", name))
    except SlimPluginsError as exc:
        conn.send(("error", name, ratio, exc))
    except Exception as exc:  # the worker itself broke: the parent names it and stops
        conn.send(("crash", name, ratio, exception_line(exc)))
    conn.close()


class _Worker:
    """The parent's view of one worker: its process, pipe and the evaluation in flight."""

    def __init__(self, index, proc, conn):
        self.index, self.proc, self.conn = index, proc, conn
        self.group = self.ratio = None
        self.since = time.monotonic()

    def describe(self):
        where = f" at group {self.group} ratio {self.ratio:g}" if self.group is not None and self.ratio is not None \
            else (f" on group {self.group}" if self.group is not None else "")
        return f"sensitivity worker {self.index} (pid {self.proc.pid}){where}"


def _worker_error(message):
    from slim_plugins.errors import SlimPluginsError

    return SlimPluginsError(message, plugin="prune",
                            hint="the sensitivity file keeps every result so far: run again to resume, "
                                 "or with --prune.sen_workers 1 to see the failure in this process")


def analyze_parallel(prunable, metric, sfile, *, groups, ratios=DEFAULT_RATIOS, cap=None, max_batches=None,
                     workers=2, show_progress=True, stall_timeout=None, check_baseline=None):
    """Like :func:`analyze`, with ``workers`` forked processes taking whole groups from a queue.

    Only this (parent) process writes the file. The workers inherit the model, the pruner and
    the evaluation function by ``fork``, so any adapter's metric works unchanged. A worker that
    dies, or sends nothing for ``stall_timeout`` seconds during one evaluation (default: 20
    baseline evaluations, at least 5 minutes), ends the analysis with an error naming it.
    """
    _start_analysis(prunable, metric, sfile, groups, max_batches, check_baseline)
    work = plan_work(sfile, groups, ratios, cap)
    queue = _group_queue(work)
    progress = Progress(len(work), f"sensitivity ({workers} workers)", enabled=show_progress)
    if not queue:
        return sfile
    if stall_timeout is None:
        stall_timeout = max(MIN_STALL_SECONDS, STALL_FACTOR * (sfile.data["metric"].get("seconds") or 0))
    active = _start_workers(prunable, metric, cap, max_batches, min(workers, len(queue)), workers)
    procs = [w.proc for w in active.values()]
    finished = False
    try:
        for worker in list(active.values()):
            _give(worker, queue, sfile, active)
        while active:
            for conn in _ready(active, stall_timeout):
                worker = active[conn]
                if _handle(worker, _receive(worker), sfile, metric, progress):
                    _give(worker, queue, sfile, active)
        finished = True
    finally:
        _stop_workers(procs, finished)
    return sfile


def _group_queue(work):
    """``[(group, ratio)]`` as ``[(group, [ratio, ...])]``: a worker takes a whole group."""
    queue = []
    for name, ratio in work:
        if queue and queue[-1][0] == name:
            queue[-1][1].append(ratio)
        else:
            queue.append((name, [ratio]))
    return queue


def _start_workers(prunable, metric, cap, max_batches, count, workers):
    """``count`` forked workers, each with its share of the CPU threads: ``{parent pipe end: worker}``."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    threads = max(1, (os.cpu_count() or 1) // workers)
    active = {}
    for index in range(count):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_worker_loop, args=(child_end, prunable, metric, cap, max_batches, threads),
                           daemon=True)
        proc.start()
        child_end.close()
        active[parent_end] = _Worker(index, proc, parent_end)
    return active


def _give(worker, queue, sfile, active):
    """The next group to ``worker`` (with the ratios the file has), or its stop when none is left."""
    worker.since = time.monotonic()
    worker.ratio = None
    if queue:
        name, todo = queue.pop(0)
        worker.group = name
        done = sfile.data["groups"].get(name, {}).get("ratios", {})
        worker.conn.send((name, todo, sfile.baseline, done))
    else:
        worker.group = None
        worker.conn.send(None)
        del active[worker.conn]


def _ready(active, stall_timeout):
    """The pipes with a message, after checking that no worker has been silent too long."""
    from multiprocessing.connection import wait

    now = time.monotonic()
    timeout = max(0.0, min(w.since + stall_timeout for w in active.values()) - now)
    ready = wait(list(active), timeout=min(timeout, 5.0) if timeout > 0 else 0)
    for worker in active.values():
        if worker.conn not in ready and time.monotonic() - worker.since > stall_timeout:
            raise _worker_error(f"{worker.describe()} sent nothing for {stall_timeout:g} s: stalled")
    return ready


def _receive(worker):
    """The worker's next message; a closed pipe is a dead worker, named with how it ended."""
    try:
        return worker.conn.recv()
    except EOFError:
        worker.proc.join(timeout=5)
        code = worker.proc.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
        raise _worker_error(f"{worker.describe()} {how}") from None


def _handle(worker, msg, sfile, metric, progress):
    """Act on one worker message; True when the worker finished its group and wants the next."""
    worker.since = time.monotonic()
    kind = msg[0]
    if kind == "start":
        _, worker.group, worker.ratio = msg
    elif kind == "result":
        _, name, ratio, value, seconds = msg
        _record_result(sfile, progress, metric, name, ratio, value, seconds)
    elif kind == "failed":
        _, name, ratio, error = msg
        _record_broken(sfile, progress, name, ratio, error, "group skipped")
    elif kind == "skip":
        progress.skip()
    elif kind == "error":  # a slim-plugins error: the same one as in one process
        raise msg[3]
    elif kind == "crash":
        raise _worker_error(f"{worker.describe()} failed: {msg[3]}")
    else:
        return True
    return False


def _stop_workers(procs, finished):
    """Join the workers; after an error, one may be stuck: do not wait for it."""
    for proc in procs:
        if proc.is_alive():
            proc.join(timeout=5 if finished else 0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


# -------------------------------------------------------------------------------- across ranks
def part_path(path, rank, world_size):
    stem, ext = os.path.splitext(path)
    return f"{stem}.rank{rank}-of-{world_size}{ext or '.json'}"


def analyze_sharded(prunable, metric, path, identity, *, groups, rank, world_size, ratios=DEFAULT_RATIOS,
                    cap=None, max_batches=None, workers=1, show_progress=True, poll=0.5, timeout=86400,
                    check_baseline=None, stall_timeout=None):
    """Each rank analyses every ``world_size``-th group into its own part file; rank 0 merges
    the parts into ``path`` once all are complete, and every rank returns the merged file.

    The files must be on a file system all ranks see (one machine, or a shared mount); otherwise
    run the ranks with their part files and join them with ``slim-plugins sens merge``.
    """
    from slim_plugins.plugins.prune.merge import merge_documents

    main = SensitivityFile.open(path, **identity)
    if not plan_work(main, groups, ratios, cap):
        return main
    mine = groups[rank::world_size]
    part = SensitivityFile.open(part_path(path, rank, world_size), **identity)
    part.data.pop("complete", None)
    for name in mine:  # results the merged file already has are not recomputed
        done = main.data["groups"].get(name)
        if done:
            part.group(name)["ratios"].update(done.get("ratios", {}))
            if done.get("failed"):
                part.group(name)["failed"] = done["failed"]
    if part.baseline is None and main.baseline is not None:
        part.set_baseline(main.baseline, main.data["metric"].get("seconds") or 0.0)
    run = analyze_parallel if workers > 1 else analyze
    extra = {"workers": workers, "stall_timeout": stall_timeout} if workers > 1 else {}
    run(prunable, metric, part, groups=mine, ratios=ratios, cap=cap, max_batches=max_batches,
        show_progress=show_progress, check_baseline=check_baseline, **extra)
    part.data["complete"] = True
    part.save()

    parts = [part_path(path, r, world_size) for r in range(world_size)]
    deadline = time.time() + timeout
    if rank == 0:
        while True:
            docs = [json.load(open(p)) for p in parts if os.path.exists(p)]
            if len(docs) == world_size and all(d.get("complete") for d in docs):
                break
            _wait(deadline, poll, f"sensitivity parts of {world_size} ranks")
        merged = merge_documents(([main.data] if main.data["groups"] else []) + docs,
                                 ([path] if main.data["groups"] else []) + parts)
        merged.pop("complete", None)
        result = SensitivityFile(path, merged)
        result.save()
        return result
    while True:
        if os.path.exists(path):
            merged = SensitivityFile.load(path)
            if not plan_work(merged, groups, ratios, cap):
                return merged
        _wait(deadline, poll, "rank 0 to merge the sensitivity parts")


def _wait(deadline, poll, what):
    if time.time() > deadline:
        from slim_plugins.errors import SensitivityFileError

        raise SensitivityFileError(f"timed out waiting for {what}", plugin="prune",
                                   hint="a rank died: run again (finished results are kept) or merge "
                                        "the part files with `slim-plugins sens merge`")
    time.sleep(poll)
