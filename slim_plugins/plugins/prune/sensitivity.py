"""Sensitivity analysis: prune each group alone at each ratio, score with the suite's metric.

The file is JSON, rewritten atomically (temp file + rename) after every evaluation, so a crash
at any moment loses at most the evaluation in flight, and a restart recomputes nothing recorded.
"""
import datetime
import hashlib
import json
import os
import tempfile
import time

import numpy as np

from slim_plugins.errors import SensitivityFileError, exception_line
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


def remove_stale_temporaries(path):
    """Temp files a killed writer of ``path`` left behind (each file has one writer)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def write_json_atomic(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise SensitivityFileError(f"{path} is not valid JSON ({exc})", plugin="prune",
                                       hint="delete it or point prune.sen_file elsewhere") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SensitivityFileError(
                f"{path} is not a slim-plugins sensitivity file", plugin="prune",
                hint="import PaddleSlim pickles with `slim-plugins sens import`")
        return cls(path, data)

    @classmethod
    def open(cls, path, *, model_fingerprint, weights, metric, criterion, max_batches):
        """Load ``path`` if it exists and belongs to this model/metric/criterion, else start one."""
        remove_stale_temporaries(path)
        if not os.path.exists(path):
            return cls.new(path, model_fingerprint=model_fingerprint, weights=weights, metric=metric,
                           criterion=criterion, max_batches=max_batches)
        found = cls.load(path)
        found.check(model_fingerprint=model_fingerprint, weights=weights, metric=metric,
                    criterion=criterion, max_batches=max_batches)
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

    def set_baseline(self, value, seconds):
        self.data["metric"]["baseline"] = float(value)
        self.data["metric"]["seconds"] = round(float(seconds), 4)

    def group(self, name, channels=None, members=None):
        g = self.data["groups"].setdefault(name, {"channels": channels, "members": members or [], "ratios": {}})
        if channels is not None:
            g["channels"] = channels
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
        for name in [n for n, g in groups.items() if g.get("legacy_name")]:
            if name in structured:
                entry = groups.pop(name)
                entry.pop("legacy_name", None)
                groups[structured[name]] = entry

    def save(self):
        self.data["updated"] = _now()
        write_json_atomic(self.path, self.data)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


def evaluate_group(prunable, metric, name, ratio, max_batches):
    """The metric with ``name`` pruned at ``ratio``; the model is restored afterwards.

    Raises :class:`GroupBreaksModel` when PaddleSlim cannot prune the group or the pruned model
    fails to evaluate (e.g. a head conv whose channel count a later reshape relies on).
    """
    try:
        applied = prunable.apply({name: ratio})
    except Exception as exc:
        raise GroupBreaksModel(exception_line(exc)) from exc
    try:
        start = time.perf_counter()
        value = metric(max_batches=max_batches)
        return value, time.perf_counter() - start
    except Exception as exc:
        raise GroupBreaksModel(exception_line(exc)) from exc
    finally:
        applied.restore()


def analyze(prunable, metric, sfile, *, groups, ratios=DEFAULT_RATIOS, cap=None, max_batches=None,
            show_progress=True, on_record=None, search=False):
    """Fill ``sfile`` for ``groups`` x ``ratios``, one evaluation at a time, in this process.

    Ratios of a group above the first one whose loss exceeds ``cap`` are skipped. With
    ``search`` (and a ``cap``), each group is searched for its cap crossing instead: see
    :func:`search_crossing`.
    """
    for name in groups:
        g = prunable.groups[name]
        sfile.group(name, channels=g.channels, members=g.members)
    if sfile.baseline is None:
        start = time.perf_counter()
        baseline = metric(max_batches=max_batches)
        sfile.set_baseline(baseline, time.perf_counter() - start)
        sfile.save()
    if search and cap is not None:
        progress = Progress(len(groups) * max(1, int(len(ratios)).bit_length()), "sensitivity (crossing search)",
                            enabled=show_progress)
        found = []
        for name in groups:  # groups of one model tend to cross alike: the median so far is the first guess
            prior = sorted(found)[(len(found) - 1) // 2] if found else None
            found.append(search_crossing(prunable, metric, sfile, name, ratios, cap, max_batches, progress,
                                         on_record, prior=prior))
        return sfile
    work = plan_work(sfile, groups, ratios, cap)
    progress = Progress(len(work), "sensitivity", enabled=show_progress)
    for name, ratio in work:
        if _skipped(sfile, name, ratio, cap):
            progress.skip()
            continue
        try:
            value, seconds = evaluate_group(prunable, metric, name, ratio, max_batches)
        except GroupBreaksModel as exc:
            sfile.record_failure(name, ratio, exc)
            sfile.save()
            progress.step(f"{name} @ {ratio:g}: breaks the model, group skipped ({exc})")
            continue
        entry = sfile.record(name, ratio, value, seconds)
        sfile.save()
        if on_record:
            on_record(name, ratio, entry)
        progress.step(f"{name} @ {ratio:g}: {metric.name} {value:.4f} loss {entry['loss']:+.4f}")
    return sfile


NEAR, NEXT_STEPS = 0.3, 3  # simulated on measured curves (small CNNs, MobileNetV2-style): fewest evaluations


def crossing_evaluations(n):
    """The most evaluations :func:`search_crossing` makes on ``n`` ratios: ceil(log2(n + 1)),
    plus two for the guess, plus ``NEXT_STEPS`` steps to the next ratio near the cap."""
    return max(1, int(n).bit_length()) + 2 + NEXT_STEPS if n else 0


def _loss(sfile, name, ratio):
    return sfile.data["groups"][name]["ratios"][ratio_key(ratio)]["loss"]


def search_crossing(prunable, metric, sfile, name, ratios, cap, max_batches=None, progress=None,
                    on_record=None, prior=None):
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
            try:
                value, seconds = evaluate_group(prunable, metric, name, ratio, max_batches)
            except GroupBreaksModel as exc:
                sfile.record_failure(name, ratio, exc)
                sfile.save()
                if progress:
                    progress.step(f"{name} @ {ratio:g}: breaks the model, treated as over the cap ({exc})")
                high = mid
                continue
            entry = sfile.record(name, ratio, value, seconds)
            sfile.save()
            if on_record:
                on_record(name, ratio, entry)
            if progress:
                progress.step(f"{name} @ {ratio:g}: {metric.name} {value:.4f} loss {entry['loss']:+.4f}")
        if _loss(sfile, name, ratio) <= cap:
            low = mid
        else:
            high = mid
    if progress:
        progress.skip(max(0, int(len(grid)).bit_length() - evaluated))
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
def _worker_loop(conn, prunable, metric, cap, max_batches, threads):
    """Forked worker: evaluate the groups the parent sends, report each result."""
    import signal

    try:  # die with the parent (SIGKILL included) instead of computing for nobody
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except Exception:
        pass
    from slim_plugins import compat

    if threads:
        compat.set_num_threads(threads)
    local = SensitivityFile(None, {"metric": {"baseline": None}, "groups": {}})
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
            try:
                value, seconds = evaluate_group(prunable, metric, name, ratio, max_batches)
            except GroupBreaksModel as exc:
                local.record_failure(name, ratio, exc)
                conn.send(("failed", name, ratio, str(exc)))
                continue
            local.record(name, ratio, value, seconds)
            conn.send(("result", name, ratio, value, seconds))
        conn.send(("done", name))
    conn.close()


def analyze_parallel(prunable, metric, sfile, *, groups, ratios=DEFAULT_RATIOS, cap=None, max_batches=None,
                     workers=2, show_progress=True, on_record=None):
    """Like :func:`analyze`, with ``workers`` forked processes taking whole groups from a queue.

    Only this (parent) process writes the file. The workers inherit the model, the pruner and
    the evaluation function by ``fork``, so any adapter's metric works unchanged.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    for name in groups:
        g = prunable.groups[name]
        sfile.group(name, channels=g.channels, members=g.members)
    if sfile.baseline is None:
        start = time.perf_counter()
        sfile.set_baseline(metric(max_batches=max_batches), time.perf_counter() - start)
        sfile.save()
    work = plan_work(sfile, groups, ratios, cap)
    queue = []
    for name, ratio in work:
        if queue and queue[-1][0] == name:
            queue[-1][1].append(ratio)
        else:
            queue.append((name, [ratio]))
    progress = Progress(len(work), f"sensitivity ({workers} workers)", enabled=show_progress)
    if not queue:
        return sfile
    ctx = mp.get_context("fork")
    threads = max(1, (os.cpu_count() or 1) // workers)
    conns, procs = [], []
    for _ in range(min(workers, len(queue))):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_worker_loop, args=(child_end, prunable, metric, cap, max_batches, threads),
                           daemon=True)
        proc.start()
        child_end.close()
        conns.append(parent_end)
        procs.append(proc)

    def give(conn):
        if queue:
            name, todo = queue.pop(0)
            done = sfile.data["groups"].get(name, {}).get("ratios", {})
            conn.send((name, todo, sfile.baseline, done))
        else:
            conn.send(None)
            conns.remove(conn)

    try:
        for conn in list(conns):
            give(conn)
        while conns:
            for conn in wait(conns):
                try:
                    msg = conn.recv()
                except EOFError:
                    raise RuntimeError("a sensitivity worker died; the file keeps every result so far, "
                                       "run again to resume") from None
                if msg[0] == "result":
                    _, name, ratio, value, seconds = msg
                    entry = sfile.record(name, ratio, value, seconds)
                    sfile.save()
                    if on_record:
                        on_record(name, ratio, entry)
                    progress.step(f"{name} @ {ratio:g}: {metric.name} {value:.4f} loss {entry['loss']:+.4f}")
                elif msg[0] == "failed":
                    _, name, ratio, error = msg
                    sfile.record_failure(name, ratio, error)
                    sfile.save()
                    progress.step(f"{name} @ {ratio:g}: breaks the model, group skipped ({error})")
                elif msg[0] == "skip":
                    progress.skip()
                else:
                    give(conn)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    return sfile


# -------------------------------------------------------------------------------- across ranks
def part_path(path, rank, world_size):
    stem, ext = os.path.splitext(path)
    return f"{stem}.rank{rank}-of-{world_size}{ext or '.json'}"


def analyze_sharded(prunable, metric, path, identity, *, groups, rank, world_size, ratios=DEFAULT_RATIOS,
                    cap=None, max_batches=None, workers=1, show_progress=True, poll=0.5, timeout=86400):
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
    extra = {"workers": workers} if workers > 1 else {}
    run(prunable, metric, part, groups=mine, ratios=ratios, cap=cap, max_batches=max_batches,
        show_progress=show_progress, **extra)
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
