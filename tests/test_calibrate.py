"""Batch-norm statistics re-estimated before a candidate plan is judged (pruned_flops choice)."""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

from slim_plugins.plugins.prune import calibrate
from slim_plugins.plugins.prune.model import PrunableModel


def small_net():
    paddle.seed(3)
    net = nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.Conv2D(4, 6, 3), nn.BatchNorm(6), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
                        nn.BatchNorm1D(6), nn.Linear(6, 2))
    net.eval()
    return net


def test_recalibration_averages_the_batch_statistics_and_leaves_other_layers_in_eval_mode():
    net = small_net()
    bn2d, legacy_bn, bn1d = net[1], net[5], net[8]
    pooled_before = (bn1d._mean.numpy().copy(), bn1d._variance.numpy().copy())
    rng = np.random.RandomState(0)
    batches = [paddle.to_tensor(rng.randn(4, 3, 10, 10).astype("float32") * (i + 1) + i) for i in range(3)]
    seen = []
    handle = net[0].register_forward_post_hook(lambda layer, inputs, out: seen.append(out.numpy()))
    with paddle.no_grad(), calibrate.recalibrating(net) as counts:
        outs = [net(x).numpy() for x in batches]
        again = net(batches[0]).numpy()
    handle.remove()
    # a plain average of the four batches' statistics, whatever the layer's momentum (0.9)
    mean = np.mean([s.mean(axis=(0, 2, 3)) for s in seen], axis=0)
    variances = [s.var(axis=(0, 2, 3)) for s in seen]
    ok_biased = np.allclose(bn2d._variance.numpy(), np.mean(variances, axis=0), rtol=1e-3, atol=1e-4)
    n = seen[0].size // seen[0].shape[1]
    ok_unbiased = np.allclose(bn2d._variance.numpy(), np.mean(variances, axis=0) * n / (n - 1), rtol=1e-3, atol=1e-4)
    assert counts[id(bn2d)] == 4 and counts[id(legacy_bn)] == 4
    np.testing.assert_allclose(bn2d._mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    assert ok_biased or ok_unbiased
    # the statistics moved: the running ones of a fresh layer are 0 and 1
    assert np.abs(legacy_bn._mean.numpy()).max() > 0.05
    # a batch norm after the global pool sees 4 values per channel: kept as it was
    np.testing.assert_array_equal(bn1d._mean.numpy(), pooled_before[0])
    np.testing.assert_array_equal(bn1d._variance.numpy(), pooled_before[1])
    assert counts.get(id(bn1d), 0) == 0
    # a SyncBatchNorm has no CPU kernel: left out on CPU; frozen ones (use_global_stats) too
    assert calibrate.batch_norms(nn.Sequential(nn.SyncBatchNorm(6), nn.BatchNorm2D(6, use_global_stats=True))) == []
    # dropout stayed off (the same batch gives the same output), and every layer is back in eval
    # mode with its momentum
    np.testing.assert_allclose(outs[0], again, rtol=1e-5, atol=1e-6)
    assert not any(layer.training for layer in net.sublayers())
    assert bn2d._momentum == pytest.approx(0.9) and legacy_bn._momentum == pytest.approx(0.9)


def test_a_recalibrated_evaluation_of_a_pruned_plan_leaves_the_model_as_it_was():
    from conftest import digits_cnn

    net, x, labels = digits_cnn()
    calls = []

    def accuracy(max_batches=None):
        calls.append(max_batches)
        with paddle.no_grad():
            return float((net(x[:600]).numpy().argmax(1) == labels[:600]).mean())

    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    prunable = PrunableModel(net, [1, 1, 8, 8])
    plan = {g: 0.6 for g in prunable.groups}
    applied = prunable.apply(plan)
    plain = accuracy()
    recalibrated = calibrate.recalibrated(net, accuracy, max_batches=2)
    assert calibrate.recalibrated(net, accuracy, max_batches=2) == recalibrated  # nothing kept between calls
    assert accuracy() == plain
    applied.restore()
    assert calls[1:] == [2, 2, 2, 2, None]  # one pass to re-estimate, one to evaluate, as the caller asked
    # the re-estimated statistics fit the pruned model better than the unpruned one's
    baseline = accuracy()
    assert recalibrated > plain + 0.1, (baseline, plain, recalibrated)
    after = net.state_dict()
    assert sorted(after) == sorted(before)
    for k, v in after.items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
