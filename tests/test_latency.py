"""The pruned_latency search on a known latency curve (the hapi tests run it on measured ones),
the paired comparison's statistics, and two small exports timed in turns (ONNX Runtime too where
paddle2onnx and onnxruntime are installed); the export of a dict-input model whose inputs are not all
used."""
import numpy as np
import paddle
import pytest

from slim_plugins.plugins.prune.latency import (
    ONNX_RUNTIME,
    PADDLE_INFERENCE,
    PROCESS_CPU,
    TOLERANCE,
    WALL,
    Exported,
    _paired,
    clock_for,
    compare,
    label,
    onnx_available,
    plan_for_latency,
    ratio_interval,
    timed,
)
from slim_plugins.plugins.prune.report import latency_lines


def curve(ratios):
    """A cut that grows with the mean ratio, as a measured one would."""
    mean = sum(ratios.values()) / 3 if ratios else 0.0
    return {"cut": 0.8 * mean, "ms": 10.0 * (1 - 0.8 * mean)}


def test_bisection_stops_within_the_tolerance_and_reports_every_plan_timed():
    shape = {"a": 1.0, "b": 0.5, "c": 0.25}
    ratios, cut, evaluations = plan_for_latency(shape, 0.3, curve, limits={g: 0.9 for g in shape})
    assert abs(cut - 0.3) <= TOLERANCE and ratios is not None
    assert evaluations[0]["ratios"] == {g: 0.9 for g in shape}  # the largest plan first: is the target in reach?
    assert all(abs(e["cut"] - curve(e["ratios"])["cut"]) < 1e-12 for e in evaluations)
    assert ratios["a"] > ratios["b"] > ratios["c"]  # the sensitivities' shape is kept


def test_an_unreachable_target_returns_no_plan_and_the_best_cut():
    ratios, cut, evaluations = plan_for_latency({"a": 1.0}, 0.9, curve, limits={"a": 0.6})
    assert ratios is None and len(evaluations) == 1 and cut == curve({"a": 0.6})["cut"]


def test_labels_name_runtime_batch_and_threads():
    assert label("Paddle Inference CPU", 64, 1) == "latency (Paddle Inference CPU, batch 64, 1 thread)"
    assert label("ONNX Runtime CPU", 1, 4) == "latency (ONNX Runtime CPU, batch 1, 4 threads)"


def test_the_interval_of_paired_runs_shows_a_ratio_that_drifts_between_stretches():
    """Per-pair noise averages out over many pairs; a ratio that differs from one stretch of the
    comparison to the next (the machine's load changed) must widen the interval."""
    rng = np.random.default_rng(0)
    a = rng.uniform(1.0, 5.0, 800)  # the load swings each model's time several-fold
    steady = a * 0.7 * rng.normal(1.0, 0.02, 800)
    ratio, low, high = ratio_interval(a, steady)
    assert abs(ratio - 0.7) < 0.005 and low < 0.7 < high and high - low < 0.01
    drifting = a * np.repeat([0.6, 0.8], 400) * rng.normal(1.0, 0.02, 800)
    ratio, low, high = ratio_interval(a, drifting)
    assert high - low > 0.1 and low < 0.7 < high


def test_report_lines_give_the_paired_cut_and_its_interval():
    before = [{"runtime": "Paddle Inference CPU", "batch_size": 64, "threads": 1, "ms": 10.0,
               "label": label("Paddle Inference CPU", 64, 1)}]
    after = [dict(before[0], ms=8.0, cut=0.3, cut_low=0.28, cut_high=0.32, pairs=400)]
    (line,) = latency_lines(before, after)
    assert line == ("latency (Paddle Inference CPU, batch 64, 1 thread): 10.000 -> 8.000 ms "
                    "(-30.0%, cut 95% CI 28.0% to 32.0% over 400 paired runs)")
    (line,) = latency_lines(before, [dict(before[0], ms=8.0)])  # a model timed alone: the medians' ratio
    assert line.endswith("10.000 -> 8.000 ms (-20.0%)")


def _work():
    return sum(range(20000))  # about a millisecond of this thread's CPU


def test_paired_runs_leave_out_the_time_a_run_waits_off_the_cpu_and_count_helper_threads():
    """On a core other processes share, a run also waits while they have it; with 1 thread that
    wait is left out (the process's CPU time), so two equal runs compare equal however long one
    of them waited. Wall times made it count (Paddle 2.6.2 on a loaded 2-core machine: a 31.6%
    cut measured as 13-16%). Work a runtime hands to a helper thread while the caller waits
    counts (Paddle 3.3.1's predictor does so)."""
    import queue
    import threading
    import time

    def waiting():  # the same work, then 3 ms off the CPU
        _work()
        time.sleep(0.003)

    jobs, done = queue.Queue(), queue.Queue()

    def helper():
        while jobs.get():
            _work()
            done.put(True)

    def elsewhere():  # the same work in a helper thread, the caller waiting for it
        jobs.put(True)
        done.get()

    threading.Thread(target=helper, daemon=True).start()
    try:
        a, b, _seconds, clock = _paired(_work, waiting, 0.05, 0.5, 0.01)
        assert clock == PROCESS_CPU and abs(ratio_interval(a, b)[0] - 1) < 0.3  # by wall time about 4
        a, b, _seconds, clock = _paired(_work, elsewhere, 0.05, 0.5, 0.01)
        assert clock == PROCESS_CPU and 0.7 < ratio_interval(a, b)[0] < 2  # the calling thread's CPU time: ~0
    finally:
        jobs.put(False)
    assert clock_for([_work], threads=2)[1] == WALL  # several threads: their CPU times add up


class Net(paddle.nn.Layer):
    def __init__(self, width):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, width, 3, padding=1)
        self.fc = paddle.nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(paddle.nn.functional.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))


def inputs_for(n):
    return [paddle.rand([n, 3, 16, 16])]


@pytest.fixture(scope="module")
def exports():
    return [Exported(Net(w), inputs_for, onnx=onnx_available()) for w in (32, 16)]


def test_two_exports_are_timed_in_pairs_with_the_cut_and_its_interval(exports):
    reference, candidate = compare(*exports, [1, 4], min_seconds=0.05, max_seconds=0.3)
    runtimes = [PADDLE_INFERENCE] + ([ONNX_RUNTIME] if onnx_available() else [])
    assert [(e["runtime"], e["batch_size"]) for e in candidate] == [(r, b) for r in runtimes for b in (1, 4)]
    for ref, cand in zip(reference, candidate):
        assert ref["label"] == label(ref["runtime"], ref["batch_size"], 1) and ref["ms"] > 0 and cand["ms"] > 0
        assert ref["runs"] == cand["runs"] == cand["pairs"] >= 4 and cand["pairs"] % 2 == 0  # each order as often
        assert ref["clock"] == cand["clock"] == PROCESS_CPU  # 1 thread: nothing runs in parallel
        assert cand["cut_low"] <= cand["cut"] <= cand["cut_high"] and "cut" not in ref


@pytest.mark.skipif(not onnx_available(), reason='ONNX Runtime is an extra: pip install "slim-plugins[onnx]"')
def test_onnx_runtime_times_the_converted_export(exports):
    (entry,) = [e for e in timed(exports[0], [2]) if e["runtime"] == ONNX_RUNTIME]
    assert entry["label"] == "latency (ONNX Runtime CPU, batch 2, 1 thread)" and entry["ms"] > 0


@pytest.mark.parametrize("reads_scale_factor", [False, True])
def test_export_leaves_out_only_the_inputs_the_forward_does_not_read(tmp_path, reads_scale_factor):
    """Paddle 3 refuses an unused dict input; leaving out one the forward reads fails in dy2st with
    its own ``Dy2StKeyError`` (not a ValueError), which must mean "needed", not end the export
    (PaddleDetection develop's Faster R-CNN reads ``im_shape``, its export path not ``scale_factor``).
    An input read in Python but used by no op can be neither fed nor left out: it is kept, unused."""
    import numpy as np
    import paddle
    import paddle.inference as pi

    from slim_plugins.plugins.prune import latency

    class Detector(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 4, 3)
            self.reads_scale_factor = reads_scale_factor  # Paddle 2.6's dy2st does not see closures

        def forward(self, inputs):
            if self.reads_scale_factor:
                _ = inputs["scale_factor"]  # read, never used
            return self.conv(inputs["image"]).mean() + inputs["im_shape"].sum()

    inputs = [{"image": paddle.ones([1, 3, 8, 8]), "im_shape": paddle.ones([1, 2]),
               "scale_factor": paddle.ones([1, 2])}]
    model_file = latency.export(Detector(), inputs, str(tmp_path / "model"))
    config = pi.Config(model_file, model_file.rsplit(".", 1)[0] + ".pdiparams")
    config.disable_gpu()
    if hasattr(config, "disable_mkldnn"):
        config.disable_mkldnn()
    predictor = pi.create_predictor(config)
    names = set(predictor.get_input_names())
    assert {"image", "im_shape"} <= names and names <= {"image", "im_shape", "scale_factor"}
    for name in names:
        predictor.get_input_handle(name).copy_from_cpu(inputs[0][name].numpy())
    predictor.run()
    out = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert out.size == 1 and np.isfinite(out).all()
