"""Latency, one definition everywhere: the median wall time of one batch through the model
exported with ``paddle.jit.save`` and run by Paddle Inference on CPU with a fixed number of
threads (and by ONNX Runtime through paddle2onnx, when both are installed).

Dygraph timings measure Python overhead as much as the model (a tiny CNN: 0.44 ms eager at batch
1 against ~0.3 ms in Paddle Inference); a deployed model runs exported, so that is what is timed.
Every figure carries its runtime, batch size and thread count, in its label and in the report.
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
PAIRED_SECONDS = 1.2  # models compared: each timed this long in all, in alternating rounds


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
    from slim_plugins.plugins.prune.program import _restored_forward

    specs = [spec_of(v, f"input_{i}", dynamic_batch=True) for i, v in enumerate(inputs)]
    with _eval_mode(model), _restored_forward(model), (context or contextlib.nullcontext()), _quiet():
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


def _feeds(inputs):
    return [(name, np.asarray(t.numpy())) for name, t in _flat(list(inputs), "input", [])]


def _median_ms(step, warmup=5, seconds=MIN_SECONDS, runs=20):
    """Median milliseconds of ``step`` over at least ``runs`` runs and ``seconds``, after warm-up."""
    for _ in range(warmup):
        step()
    times = []
    started = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - started < seconds and len(times) < 2000):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000, len(times)


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
        import onnxruntime
        import paddle2onnx

        onnx_file = os.path.splitext(model_file)[0] + ".onnx"
        paddle2onnx.export(model_file, os.path.splitext(model_file)[0] + ".pdiparams", onnx_file)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
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


def timed(exported, batch_sizes, rounds=1):
    """Latency entries ``{"runtime", "batch_size", "threads", "ms", "runs", "label"}`` of each
    :class:`Exported` in ``exported``, one list each. With several models, they run in
    alternating ``rounds`` and each figure is the median of its rounds' medians: on a loaded
    machine the CPU's speed drifts between minutes by more than a pruning cut, so figures that
    are compared are measured in the same minute."""
    timers = [e.timers(batch_sizes) for e in exported]
    medians = [[[] for _ in t] for t in timers]
    runs = [[0] * len(t) for t in timers]
    for _ in range(rounds):
        for i, model_timers in enumerate(timers):
            for j, (_runtime, _batch, step) in enumerate(model_timers):
                seconds = MIN_SECONDS if rounds == 1 else PAIRED_SECONDS / rounds
                ms, n = _median_ms(step, warmup=5 if rounds == 1 else 2, seconds=seconds,
                                   runs=20 if rounds == 1 else 5)
                medians[i][j].append(ms)
                runs[i][j] += n
    return [[{"runtime": runtime, "batch_size": int(batch), "threads": e.threads, "ms": float(np.median(m)),
              "runs": n, "label": label(runtime, batch, e.threads)}
             for (runtime, batch, _step), m, n in zip(t, ms_lists, run_counts)]
            for e, t, ms_lists, run_counts in zip(exported, timers, medians, runs)]


def measure(model, inputs_for, batch_sizes, threads=1, onnx=True, log=None):
    """Latency entries of ``model`` alone (see :func:`timed`)."""
    return timed([Exported(model, inputs_for, threads, onnx, log)], batch_sizes)[0]


def entry(latencies, batch_size, runtime=PADDLE_INFERENCE):
    """The measurement of ``runtime`` (or its variant: "... without oneDNN") at ``batch_size`` in a
    list :func:`measure` returned."""
    return next((e for e in latencies or () if e["runtime"].startswith(runtime) and e["batch_size"] == batch_size),
                None)


# ------------------------------------------------------------------------------------ target
def cut_against(reference, model, batch_size, rounds=8):
    """``(cut, ms)``: ``model``'s latency cut against the :class:`Exported` ``reference``, the
    two timed in alternating rounds (Paddle Inference only)."""
    candidate = Exported(model, reference.inputs_for, reference.threads, onnx=False, context=reference.context)
    ref, cand = timed([reference, candidate], [batch_size], rounds)
    ref, cand = entry(ref, batch_size), entry(cand, batch_size)
    return 1 - cand["ms"] / ref["ms"], cand["ms"]


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

    :param cut_of: ``cut_of(ratios) -> (cut, ms)``, measured on the pruned, exported model.
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
            cut, ms = cut_of(ratios)
            seen[key] = {"scale": k, "cut": cut, "ms": ms, "groups": len(ratios), "ratios": ratios}
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
