"""The pruned_latency search on a known latency curve (the hapi tests run it on measured ones); the
export of a dict-input model whose inputs are not all used."""
import pytest

from slim_plugins.plugins.prune.latency import TOLERANCE, label, plan_for_latency


def curve(ratios):
    """A cut that grows with the mean ratio, as a measured one would."""
    mean = sum(ratios.values()) / 3 if ratios else 0.0
    return 0.8 * mean, 10.0 * (1 - 0.8 * mean)


def test_bisection_stops_within_the_tolerance_and_reports_every_plan_timed():
    shape = {"a": 1.0, "b": 0.5, "c": 0.25}
    ratios, cut, evaluations = plan_for_latency(shape, 0.3, curve, limits={g: 0.9 for g in shape})
    assert abs(cut - 0.3) <= TOLERANCE and ratios is not None
    assert evaluations[0]["ratios"] == {g: 0.9 for g in shape}  # the largest plan first: is the target in reach?
    assert all(abs(e["cut"] - curve(e["ratios"])[0]) < 1e-12 for e in evaluations)
    assert ratios["a"] > ratios["b"] > ratios["c"]  # the sensitivities' shape is kept


def test_an_unreachable_target_returns_no_plan_and_the_best_cut():
    ratios, cut, evaluations = plan_for_latency({"a": 1.0}, 0.9, curve, limits={"a": 0.6})
    assert ratios is None and len(evaluations) == 1 and cut == curve({"a": 0.6})[0]


def test_labels_name_runtime_batch_and_threads():
    assert label("Paddle Inference CPU", 64, 1) == "latency (Paddle Inference CPU, batch 64, 1 thread)"
    assert label("ONNX Runtime CPU", 1, 4) == "latency (ONNX Runtime CPU, batch 1, 4 threads)"


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
