"""The sensitivity analysis reuses what a pruned group cannot change (prefix.PrefixCache):
the same metric values as computing everything, with fewer sublayer calls."""
import numpy as np
import paddle
import paddle.nn as nn

from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.prefix import PrefixCache
from slim_plugins.plugins.prune.sensitivity import (
    SensitivityFile,
    analyze,
    architecture_fingerprint,
    weights_fingerprint,
)
from slim_plugins.run import Metric

SHAPE = [1, 3, 16, 16]


class CountedConv(nn.Conv2D):
    calls = 0

    def forward(self, x):
        CountedConv.calls += 1
        return nn.Conv2D.forward(self, x)


class Keeps(nn.Layer):
    """Keeps its last input (as some necks keep features for a head): must run every time."""

    calls = 0

    def forward(self, x):
        Keeps.calls += 1
        self.kept = x
        return x * 2


def block(cin, cout):
    return nn.Sequential(nn.Conv2D(cin, cout, 3, padding=1), nn.BatchNorm2D(cout), nn.ReLU())


class Chain(nn.Layer):
    """Blocks in a row, a residual pair, and an in-place op on a cached sublayer's output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(CountedConv(3, 8, 3, padding=1), nn.BatchNorm2D(8), nn.ReLU())
        self.b1 = block(8, 16)
        self.b2 = block(16, 16)
        self.b3 = block(16, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x.scale_(2.0)  # in place: a cached output handed back as it is would be doubled again
        x = self.b1(x)
        x = x + self.b2(x)
        x = self.b3(x)
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def make_chain():
    paddle.seed(1)
    net = Chain()
    for p in net.parameters():
        p.set_value(paddle.randn(p.shape) * 0.5 + (0.1 if len(p.shape) == 1 else 0))
    net.eval()
    return net


class Closeness:
    """A continuous metric (any difference in any output shows) over several batches; with
    ``permute``, each evaluation sees the samples of a batch in another order."""

    def __init__(self, net, permute=False):
        self.net = net
        rng = np.random.RandomState(0)
        self.batches = [rng.randn(8, 3, 16, 16).astype("float32") for _ in range(3)]
        self.permute, self.calls = permute, 0
        self.reference = [net(paddle.to_tensor(b)).numpy() for b in self.batches]

    def __call__(self, max_batches=None):
        self.calls += 1
        order = np.random.RandomState(self.calls).permutation(8) if self.permute else np.arange(8)
        with paddle.no_grad():
            gaps = [np.abs(self.net(paddle.to_tensor(b[order])).numpy() - ref[order]).mean()
                    for b, ref in zip(self.batches, self.reference)]
        return 1.0 / (1.0 + float(np.mean(gaps)))


def run(tmp_path, name, permute, cache_bytes):
    net = make_chain()
    pm = PrunableModel(net, SHAPE)
    metric = Closeness(net, permute)
    sfile = SensitivityFile.open(str(tmp_path / f"{name}.json"), model_fingerprint=architecture_fingerprint(net),
                                 weights=weights_fingerprint(net), metric="close", criterion="l1_norm",
                                 max_batches=None)
    CountedConv.calls = 0
    analyze(pm, Metric("close", metric), sfile, groups=pm.selected_groups(), ratios=[0.25, 0.5, 0.75],
            show_progress=False, cache_bytes=cache_bytes)
    values = {g: {r: e["metric"] for r, e in rec["ratios"].items()} for g, rec in sfile.groups.items()}
    return values, CountedConv.calls, metric.calls, pm


def test_cached_prefix_gives_the_same_metrics_with_fewer_sublayer_calls(tmp_path):
    plain, stem_calls, evaluations, pm = run(tmp_path, "plain", False, 0)
    cached, cached_stem_calls, cached_evaluations, _ = run(tmp_path, "cached", False, 64 << 20)
    assert list(plain) == ["stem.0.weight", "b1.0.weight", "b3.0.weight"]  # b2 is b1's residual partner
    assert all(len(v) == 3 for v in plain.values())
    assert any(v < 1.0 for rec in plain.values() for v in rec.values())  # the pruning shows in the metric
    assert cached == plain  # exactly: the in-place op and the residual included
    assert cached_evaluations == evaluations
    assert stem_calls == 3 * evaluations  # 3 batches per evaluation
    # the baseline and the stem's own group compute the stem every time; b1's first evaluation
    # computes it once more (and keeps it), then b1 and b3 reuse it
    assert cached_stem_calls == 3 * (1 + 3 + 1), (cached_stem_calls, stem_calls)
    assert "forward" not in pm.model.stem.__dict__  # the model is left as it was


def test_other_batches_or_another_order_are_computed_not_reused(tmp_path):
    plain, _, _, _ = run(tmp_path, "plain", True, 0)
    cached, cached_stem_calls, evaluations, _ = run(tmp_path, "cached", True, 64 << 20)
    assert cached == plain
    assert cached_stem_calls == 3 * evaluations  # every batch is new: nothing was reused


def test_a_layer_that_keeps_something_of_its_call_always_runs():
    paddle.seed(0)
    plain = nn.Sequential(nn.Conv2D(3, 4, 1), nn.ReLU())
    keeps = nn.Sequential(Keeps(), nn.Conv2D(3, 4, 1))
    for net in (plain, keeps):
        net.eval()
        cache = PrefixCache(net)
        x = paddle.randn([2, 3, 4, 4])
        Keeps.calls = 0
        outs = []
        for _ in range(3):
            with cache.evaluating([net[1]]):  # the second sublayer "pruned": the first may be reused
                outs.append(net(x).numpy())
        assert all(np.array_equal(o, outs[0]) for o in outs)
        if net is plain:
            assert cache.hits == 2 and cache.misses == 1
        else:
            assert Keeps.calls == 3 and cache.hits == 0 and cache.bytes == 0
