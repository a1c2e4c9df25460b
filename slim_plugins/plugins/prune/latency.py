"""Latency, one definition everywhere: the median time of one batch through the model
exported with ``paddle.jit.save`` and run by Paddle Inference on CPU with a fixed number of
threads (and by ONNX Runtime through paddle2onnx, when both are installed).

Dygraph timings measure Python overhead as much as the model (a tiny CNN: 0.44 ms eager at batch
1 against ~0.3 ms in Paddle Inference); a deployed model runs exported, so that is what is timed.
Every figure carries its runtime, batch size and thread count, in its label and in the report.
A pruned model is compared with the unpruned one in paired runs (:func:`compare`): its cut is the
pairs' median ratio, with a 95% interval.

With 1 thread a run is timed by the process's CPU time (:func:`clock_for`): on an idle core that
is its wall time, and on a core other processes share it leaves out the time the run waited for
the core. Wall times on a shared core are the run's time plus the waits, which
shrank a 22% cut to 8-15% (and by how much moved with the load from one comparison to the next:
the search and the report disagreed by up to 14 points on Paddle 2.6.2).
"""
import contextlib
import os
import shutil
import tempfile
import time

import numpy as np
import paddle

from slim_plugins.plugins.prune.program import spec_of

PADDLE_INFERENCE = "Paddle Inference CPU"
ONNX_RUNTIME = "ONNX Runtime CPU"
ONNX_MISSING = ('ONNX Runtime latency skipped: paddle2onnx and onnxruntime are not installed '
                '(pip install "slim-plugins[onnx]")')
TOLERANCE = 0.025  # pruned_latency: a measured cut within this of the target is reached
ALIGN = 8  # pruned_latency rounds kept channels to this multiple unless prune.align says otherwise: CPU kernels
# (oneDNN's blocked layouts) run channel counts off a multiple of 8 slower than the next multiple up
MIN_SECONDS = 0.4  # time each measurement at least this long (after warm-up): a stable median


def label(runtime, batch_size, threads):
    return f"latency ({runtime}, batch {batch_size}, {threads} thread{'s' if threads != 1 else ''})"


def batch_size_of(loader):
    """The batch size a data loader (paddle DataLoader, ppdet reader, ...) gives, or None."""
    for path in ("batch_size", "batch_sampler.batch_size", "_batch_size", "dataloader.batch_size",
                 "dataloader.batch_sampler.batch_size", "loader.batch_size"):
        obj = loader
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, int) and obj > 0:
            return obj
    return None


def onnx_available():
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("paddle2onnx", "onnxruntime"))


# ------------------------------------------------------------------------------------ export
def _flat(value, name, out):
    """``[(name, tensor)]`` in the order of the input specs: dicts by key, lists by index."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(v, k, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flat(v, f"{name}_{i}", out)
    elif hasattr(value, "shape"):
        out.append((name, value))
    return out


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train() if was_training else model.eval()


def export(model, inputs, prefix, context=None):
    """``paddle.jit.save`` of ``model`` in eval mode, with a free batch dimension; the model's
    mode and its sublayers' ``forward`` are left as they were. ``context``: a context manager
    to export in (the tracer's stand-ins for post-processing that does not convert). Returns
    the model file."""
    from slim_plugins.compat import restored_forwards

    specs = [spec_of(v, f"input_{i}", dynamic_batch=True) for i, v in enumerate(inputs)]
    with _eval_mode(model), restored_forwards(model), (context or contextlib.nullcontext()), _quiet():
        try:
            paddle.jit.save(model, prefix, input_spec=specs)
        except ValueError as exc:  # Paddle 3 refuses inputs the outputs do not use (a detector's im_shape)
            if "not involved in the target_vars" not in str(exc):
                raise
            _save_without_unused(model, prefix, specs)
    for ext in (".json", ".pdmodel"):  # PIR (Paddle 3) or the old program format
        if os.path.exists(prefix + ext):
            return prefix + ext
    raise FileNotFoundError(f"paddle.jit.save wrote no model file next to {prefix}")


def _save_without_unused(model, prefix, specs):
    """Leave out dict inputs one at a time while the export still refuses an unused input, as
    ppdet's export prunes its input spec. A trial that fails otherwise needs the input it left
    out: dy2st raises its own ``Dy2StKeyError`` (an ``Exception``, not a ``KeyError``) where the
    forward reads it (PaddleDetection develop's Faster R-CNN reads ``inputs['im_shape']``). An input
    the forward reads but no op uses stays, fed and unused (``skip_prune_program``)."""
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            continue
        for key in list(spec)[1:]:
            trial = list(specs)
            trial[i] = {k: v for k, v in specs[i].items() if k != key}
            try:
                paddle.jit.save(model, prefix, input_spec=trial)
                return
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, ValueError) or "not involved in the target_vars" not in str(exc):
                    continue  # the model needs this input
                specs = trial
    try:
        paddle.jit.save(model, prefix, input_spec=specs)
    except ValueError as exc:  # an input read in Python but used by no op: keep it, unused
        if "not involved in the target_vars" not in str(exc):
            raise
        paddle.jit.save(model, prefix, input_spec=specs, skip_prune_program=True)


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _silent_stdout():
    """File descriptor 1 to /dev/null (a converter's C++ and Python progress lines)."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _feeds(inputs):
    return [(name, np.asarray(t.numpy())) for name, t in _flat(list(inputs), "input", [])]


PROCESS_CPU = "CPU time of the process"
WALL = "wall time"
PARALLEL = 1.5  # clock_for: a process using this much more CPU than wall time runs work in parallel (Paddle
# 3.3.1's predictor, 1 thread: up to 1.15 on an idle machine, its helper thread partly overlapping the caller)


def clock_for(steps, threads, seconds=0.02, runs=200):
    """``(clock, name)`` to time ``steps`` (callables, already warm) by: with 1 thread, the
    process's CPU time (``time.process_time``, :data:`PROCESS_CPU`), unless runs of ``seconds``
    of CPU time (or ``runs`` runs) use more than :data:`PARALLEL` x their wall time (work in
    parallel threads); else ``time.perf_counter`` (:data:`WALL`). The process's CPU time leaves
    out the time a run waited while other processes had the core, and counts the work a runtime
    hands to a helper thread while the caller waits (Paddle 3.3.1's predictor: a quarter of a
    small model's CPU time at batch 1), which the calling thread's CPU time would miss."""
    if int(threads) != 1:
        return time.perf_counter, WALL
    for step in steps:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(runs):
            step()
            if time.process_time() - cpu >= seconds:
                break
        if time.process_time() - cpu > PARALLEL * (time.perf_counter() - wall):
            return time.perf_counter, WALL
    return time.process_time, PROCESS_CPU


def _median_ms(step, threads=1, warmup=5, seconds=MIN_SECONDS, runs=20):
    """``(median milliseconds, runs, clock name)`` of ``step`` over at least ``runs`` runs and
    ``seconds``, after warm-up, timed by :func:`clock_for`'s clock."""
    for _ in range(warmup):
        step()
    clock, name = clock_for([step], threads)
    times = []
    started = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - started < seconds and len(times) < 2000):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return float(np.median(times)) * 1000, len(times), name


# ------------------------------------------------------------------------------------ runtimes
class PaddleInference:
    """A CPU predictor of an exported model: inputs copied in, outputs copied out, per run.
    A model whose ops oneDNN cannot run (Paddle 3.3: a detector's prior boxes) runs without it,
    and its runtime says so."""

    runtime = PADDLE_INFERENCE

    def __init__(self, model_file, threads, onednn=True):
        self.model_file, self.threads = model_file, threads
        self.predictor = self._predictor(onednn=onednn)
        if not onednn:
            self.runtime = PADDLE_INFERENCE + " without oneDNN"

    def _predictor(self, onednn):
        from paddle import inference

        config = inference.Config(self.model_file, os.path.splitext(self.model_file)[0] + ".pdiparams")
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(int(self.threads))
        if not onednn:
            config.disable_mkldnn()
        config.disable_glog_info()
        return inference.create_predictor(config)

    def _step(self, feeds):
        names = self.predictor.get_input_names()
        by_name = dict(feeds)
        handles = [(self.predictor.get_input_handle(n), by_name[n] if n in by_name else feeds[i][1])
                   for i, n in enumerate(names)]
        outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]
        predictor = self.predictor

        def step():
            for handle, array in handles:
                handle.reshape(array.shape)
                handle.copy_from_cpu(array)
            predictor.run()
            for out in outputs:
                out.copy_to_cpu()

        return step

    def timer(self, feeds):
        step = self._step(feeds)
        try:
            step()
        except Exception:  # noqa: BLE001
            if self.runtime != PADDLE_INFERENCE:
                raise
            self.predictor = self._predictor(onednn=False)
            self.runtime = PADDLE_INFERENCE + " without oneDNN"
            step = self._step(feeds)
            step()
        return step


class OnnxRuntime:
    """The exported model converted by paddle2onnx, run by an ONNX Runtime CPU session."""

    runtime = ONNX_RUNTIME

    def __init__(self, model_file, threads):
        import inspect

        import onnxruntime
        import paddle2onnx

        onnx_file = os.path.splitext(model_file)[0] + ".onnx"
        kwargs = {}
        if "optimize_tool" in inspect.signature(paddle2onnx.export).parameters:
            # its default (polygraphy) needs onnx_graphsurgeon, which paddle2onnx 2.1 does not install: a
            # traceback and "Constant folding pass failed"; ONNX Runtime optimises the graph itself anyway
            kwargs["optimize_tool"] = "onnxoptimizer"
        with _quiet(), _silent_stdout():
            paddle2onnx.export(model_file, os.path.splitext(model_file)[0] + ".pdiparams", onnx_file, **kwargs)
        if not os.path.exists(onnx_file):  # paddle2onnx logs a failed conversion and returns
            raise RuntimeError(f"paddle2onnx wrote no {os.path.basename(onnx_file)}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warning per initializer the graph leaves unused
        self.session = onnxruntime.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])

    def timer(self, feeds):
        names = [i.name for i in self.session.get_inputs()]
        by_name = dict(feeds)
        feed = {n: by_name[n] if n in by_name else feeds[i][1] for i, n in enumerate(names)}
        return lambda: self.session.run(None, feed)


def _runs_in_a_child(model_file, threads, feeds):
    """Whether the exported model runs with oneDNN (True) or only without it (False), tried in
    forked children: a predictor that crashes the process (Paddle 3.3.1's oneDNN on PaddleX's
    YOLOv3: a segmentation fault) must not take the user's training with it. Raises RuntimeError
    (the caller logs "latency not measured") when neither runs. Where fork is missing, True."""
    if not hasattr(os, "fork"):
        return True
    for onednn in (True, False):
        pid = os.fork()
        if pid == 0:  # the child: one run, then leave without running the parent's clean-up
            code = 1
            try:
                with _quiet():
                    PaddleInference(model_file, threads, onednn=onednn).timer(feeds)
                code = 0
            except BaseException:  # noqa: BLE001
                pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return onednn
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
        last = f"the exported model crashed or failed in Paddle Inference ({how}"
    raise RuntimeError(last + ", with and without oneDNN)")


class Exported:
    """``model`` as it is now, exported and loaded into each runtime available (the files are
    gone once loaded: the predictors keep the model in memory)."""

    def __init__(self, model, inputs_for, threads=1, onnx=True, log=None, context=None):
        self.inputs_for, self.threads, self.context = inputs_for, int(threads), context
        directory = tempfile.mkdtemp(prefix="slim-latency-")
        try:
            model_file = export(model, inputs_for(1), os.path.join(directory, "model"), context and context())
            self.engines = [PaddleInference(model_file, threads, onednn=_runs_in_a_child(model_file, threads,
                                                                                        _feeds(inputs_for(1))))]
            self.engines[0].timer(_feeds(inputs_for(1)))  # one run, while the files are there to fall back on
            if onnx and onnx_available():
                try:
                    self.engines.append(OnnxRuntime(model_file, threads))
                except Exception as exc:  # noqa: BLE001  ONNX is an extra: a failed conversion is one line
                    if log:
                        log(f"{ONNX_RUNTIME} latency skipped: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def timers(self, batch_sizes):
        feeds = {b: _feeds(self.inputs_for(b)) for b in batch_sizes}
        timers = []
        for engine in self.engines:
            for b in batch_sizes:
                step = engine.timer(feeds[b])
                timers.append((engine.runtime, b, step))
        return timers


def timed(exported, batch_sizes):
    """Latency entries ``{"runtime", "batch_size", "threads", "ms", "runs", "label"}`` of one
    :class:`Exported`, each the median of its runs (see :func:`compare` for two models)."""
    return [{"runtime": runtime, "batch_size": int(batch), "threads": exported.threads,
             "ms": ms, "runs": n, "clock": clock, "label": label(runtime, batch, exported.threads)}
            for runtime, batch, step in exported.timers(batch_sizes)
            for ms, n, clock in [_median_ms(step, exported.threads)]]


PAIRED_MIN_SECONDS = 1.5  # a comparison runs at least this long per batch size and runtime ...
PAIRED_MAX_SECONDS = 12.0  # ... and at most this long, unless its confidence interval is narrow first, ...
PAIRED_MIN_PAIRS = 64  # ... or it has fewer pairs (a detector at 0.3 s a run), up to 5 x PAIRED_MAX_SECONDS
CI_HALF_WIDTH = 0.01  # ... narrow: the cut known to within +-1 point (95%)
BLOCKS = 8  # the interval comes from the spread of this many consecutive stretches of the comparison
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36}  # Student's t, 95% two-sided


def ratio_interval(a, b, blocks=BLOCKS):
    """``(ratio, low, high)``: ``b``'s time over ``a``'s from runs made in pairs (``a[i]`` next
    to ``b[i]``), as the median of the pairs' ratios, with a 95% interval from the medians of
    ``blocks`` consecutive stretches of pairs (on a loaded machine the ratio itself drifts from
    one stretch to the next, which an interval over single pairs would not show)."""
    ratios = np.asarray(b, dtype=float) / np.asarray(a, dtype=float)
    ratio = float(np.median(ratios))
    m = min(blocks, len(ratios) // 2)
    if m < 2:
        return ratio, float("-inf"), float("inf")
    medians = [float(np.median(part)) for part in np.array_split(ratios, m)]
    half = T_975[m - 1] * float(np.std(medians, ddof=1)) / np.sqrt(m)
    return ratio, ratio - half, ratio + half


def _paired(reference, candidate, min_seconds, max_seconds, half_width, enough=None, threads=1):
    """Times of ``reference()`` and ``candidate()`` run in turns, one run each a pair (the order
    swapped every pair), until the ratio's interval is within ``half_width`` or ``enough(cut,
    low, high)`` says the cut is known well enough (after ``min_seconds``), or ``max_seconds``
    have passed with at least :data:`PAIRED_MIN_PAIRS` pairs made (5 x ``max_seconds`` at most);
    and :func:`clock_for`'s name of the clock they were timed by."""
    for step in (reference, candidate, reference, candidate):  # warm-up: shapes, caches
        step()
    clock, clock_name = clock_for([reference, candidate], threads)
    a, b = [], []
    started = time.perf_counter()
    while True:
        for first, second, out_first, out_second in ((reference, candidate, a, b), (candidate, reference, b, a)):
            t0 = clock()
            first()
            t1 = clock()
            second()
            out_first.append(t1 - t0)
            out_second.append(clock() - t1)
        elapsed = time.perf_counter() - started
        if elapsed >= max_seconds and (len(a) >= PAIRED_MIN_PAIRS or (elapsed >= 5 * max_seconds and len(a) >= 4)):
            break
        if elapsed >= min_seconds and len(a) >= 4 * BLOCKS and len(a) % 8 == 0:
            ratio, low, high = ratio_interval(a, b)
            if (high - low) / 2 <= half_width or (enough is not None and enough(1 - ratio, 1 - high, 1 - low)):
                break
    return a, b, time.perf_counter() - started, clock_name


def compare(reference, candidate, batch_sizes, min_seconds=None, max_seconds=None, half_width=CI_HALF_WIDTH,
            enough=None):
    """Latency entries of two :class:`Exported` (the unpruned and the pruned model), ``(reference
    entries, candidate entries)``, for every runtime both have and every batch size.

    The two run in turns, one run each at a time: on a loaded machine a model's time swings
    several-fold within seconds (another process takes the core), and runs made next to each
    other see the same load; with 1 thread each run is timed by the process's CPU time
    (:func:`clock_for`; the entries' ``clock``). Each entry's ``ms`` is the median of its runs; the candidate's
    entries also carry ``cut`` (one minus the median ratio of paired runs) with its 95%
    interval ``cut_low``/``cut_high`` and the ``pairs`` timed: the figure compared with a
    latency target. Runs until the interval is within ``half_width`` (or ``enough(cut, low,
    high)``) or ``max_seconds``."""
    min_seconds = PAIRED_MIN_SECONDS if min_seconds is None else min_seconds
    max_seconds = PAIRED_MAX_SECONDS if max_seconds is None else max_seconds
    ref_timers = {(r.split(" without")[0], b): (r, s) for r, b, s in reference.timers(batch_sizes)}
    ref_out, cand_out = [], []
    for runtime, batch, step in candidate.timers(batch_sizes):
        base = ref_timers.get((runtime.split(" without")[0], batch))
        if base is None:
            continue
        a, b, seconds, clock = _paired(base[1], step, min_seconds, max_seconds, half_width, enough,
                                       max(reference.threads, candidate.threads))
        ratio, low, high = ratio_interval(a, b)
        for out, name, times, exported in ((ref_out, base[0], a, reference), (cand_out, runtime, b, candidate)):
            out.append({"runtime": name, "batch_size": int(batch), "threads": exported.threads,
                        "ms": float(np.median(times)) * 1000, "runs": len(times), "clock": clock,
                        "label": label(name, batch, exported.threads)})
        cand_out[-1].update({"cut": 1 - ratio, "cut_low": 1 - high, "cut_high": 1 - low, "pairs": len(a),
                             "seconds": round(seconds, 2)})
    return ref_out, cand_out


def seconds(max_seconds):
    """:func:`compare`'s time limits for a ``latency_seconds`` option (None: the defaults)."""
    if max_seconds is None:
        return {}
    return {"min_seconds": min(PAIRED_MIN_SECONDS, max_seconds), "max_seconds": max_seconds}


def interval_text(e):
    """``95% CI 27.1% to 31.0%, 412 pairs`` of a :func:`compare` entry."""
    return f"95% CI {e['cut_low']:.1%} to {e['cut_high']:.1%}, {e['pairs']} pairs"


def measure(model, inputs_for, batch_sizes, threads=1, onnx=True, log=None):
    """Latency entries of ``model`` alone (see :func:`timed`)."""
    return timed(Exported(model, inputs_for, threads, onnx, log), batch_sizes)


def entry(latencies, batch_size, runtime=PADDLE_INFERENCE):
    """The measurement of ``runtime`` (or its variant: "... without oneDNN") at ``batch_size`` in a
    list :func:`measure` returned."""
    return next((e for e in latencies or () if e["runtime"].startswith(runtime) and e["batch_size"] == batch_size),
                None)


# ------------------------------------------------------------------------------------ target
def cut_against(reference, model, batch_size, target=None, tolerance=TOLERANCE, max_seconds=None):
    """``model``'s entry (:func:`compare`: ``cut``, its interval, ``ms``) against the
    :class:`Exported` ``reference`` (Paddle Inference only). With a ``target``, timing stops as
    soon as the interval lies wholly inside ``target +- tolerance`` or wholly outside it: what
    the search needs to know of the plan."""
    candidate = Exported(model, reference.inputs_for, reference.threads, onnx=False, context=reference.context)
    enough = None
    if target is not None:
        band = (target - tolerance, target + tolerance)
        enough = lambda cut, low, high: (band[0] <= low and high <= band[1]) or high < band[0] or low > band[1]  # noqa: E731
    ref, cand = compare(reference, candidate, [batch_size], enough=enough, **seconds(max_seconds))
    return dict(entry(cand, batch_size), reference_ms=entry(ref, batch_size)["ms"])


def _scaled(shape, k, limits, channels, align):
    from slim_plugins.plugins.prune.ratios import align_ratios

    ratios = {g: min(v * k, limits.get(g, 0.9)) for g, v in shape.items()}
    ratios = {g: float(r) for g, r in ratios.items() if r > 1e-9}
    if align and channels:
        ratios = align_ratios(ratios, channels, align)
    return ratios


def plan_for_latency(shape, target, cut_of, limits=None, channels=None, align=None, tolerance=TOLERANCE,
                     max_evals=10):
    """``{group: min(k * shape[group], limit)}`` whose measured latency cut is within
    ``tolerance`` of ``target``: bisection on the common scale ``k`` (a larger ``k`` prunes
    every group further), stopping at the first plan within the tolerance.

    Measurements are noisy: each is a median, and a cut is only ever compared with the target
    with the tolerance. Without a plan within it, the one closest to the target of those not
    below ``target - tolerance`` is taken (else the closest).

    :param cut_of: ``cut_of(ratios) -> {"cut", "ms", ...}`` (see :func:`cut_against`), measured
        on the pruned, exported model.
    :returns: ``(ratios, cut, evaluations)`` or ``(None, best cut, evaluations)`` when even the
        largest scale does not come within the tolerance below the target.
    """
    limits = limits or {}
    shape = {g: float(v) for g, v in shape.items() if v > 0}
    evaluations, seen = [], {}

    def evaluate(k):
        ratios = _scaled(shape, k, limits, channels, align)
        key = tuple(sorted((g, round(r, 6)) for g, r in ratios.items()))
        if key not in seen:  # equal plans after alignment: measured once
            measured = cut_of(ratios)
            seen[key] = {"scale": k, "groups": len(ratios), "ratios": ratios,
                         **{f: measured[f] for f in ("cut", "ms", "cut_low", "cut_high", "pairs") if f in measured}}
            evaluations.append(seen[key])
        return seen[key]["cut"]

    top = max([limits.get(g, 0.9) / v for g, v in shape.items()] or [0.0])
    if not shape or evaluate(top) < target - tolerance:
        return None, (evaluations[-1]["cut"] if evaluations else 0.0), evaluations
    low, high, steps = 0.0, top, 0
    while abs(evaluations[-1]["cut"] - target) > tolerance and len(evaluations) < max_evals and steps < 3 * max_evals:
        k = (low + high) / 2
        steps += 1
        if evaluate(k) < target:
            low = k
        else:
            high = k
    reached = [e for e in evaluations if e["cut"] >= target - tolerance]
    best = min(reached or evaluations, key=lambda e: abs(e["cut"] - target))
    return best["ratios"], best["cut"], evaluations
