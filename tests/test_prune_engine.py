"""The prune plugin's engine against PaddleSlim itself, on small real models."""
import json
import os
import pickle

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from slim_plugins.errors import OptionError, PruneError, SensitivityFileError
from slim_plugins.plugins.prune import measure
from slim_plugins.plugins.prune.legacy import load_legacy, to_sensitivity_json
from slim_plugins.plugins.prune.merge import merge_files
from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.plan import find_plan, make_plan, plan_path, replay
from slim_plugins.plugins.prune.ratios import (
    align_ratios,
    back_off,
    fixed_ratios,
    plans_for_flops,
    ratio_under_budget,
    ratios_by_loss,
    ratios_for_flops,
)
from slim_plugins.plugins.prune.sensitivity import (
    DEFAULT_RATIOS,
    SensitivityFile,
    analyze,
    architecture_fingerprint,
    crossing_evaluations,
    relative_loss,
    weights_fingerprint,
)
from slim_plugins.run import Metric

SHAPE = [1, 3, 16, 16]


class Net(nn.Layer):
    """conv-bn-relu x2, a residual pair and a depthwise conv: the couplings PaddleSlim groups."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2D(16)
        self.conv2 = nn.Conv2D(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2D(32)
        self.dw = nn.Conv2D(32, 32, 3, padding=1, groups=32)
        self.conv3 = nn.Conv2D(32, 32, 1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = nn.functional.relu(self.bn1(self.conv1(x)))
        x = nn.functional.relu(self.bn2(self.conv2(x)))
        x = x + self.conv3(self.dw(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def make_net(seed=0):
    paddle.seed(seed)
    net = Net()
    for p in net.parameters():  # distinct norms so channel choice is unambiguous
        p.set_value(paddle.randn(p.shape) * 0.5 + (0.1 if len(p.shape) == 1 else 0))
    net.eval()
    return net


def state(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def test_groups_have_structured_names():
    pm = PrunableModel(make_net(), SHAPE)
    assert "conv1.weight" in pm.groups
    assert "bn1.weight" in pm.groups["conv1.weight"].members
    assert "conv2.weight" in pm.groups["conv1.weight"].members  # input channels follow
    assert pm.resolve("conv2d_*") or pm.resolve("conv1.*")


@pytest.mark.parametrize("criterion", ["l1_norm", "l2_norm", "fpgm"])
def test_masks_equal_paddleslims_own_structural_pruning(criterion):
    from slim_plugins import compat

    ours, theirs = make_net(), make_net()
    original = state(ours)
    pm = PrunableModel(ours, SHAPE, criterion=criterion)
    pruner_cls = compat.import_paddleslim_pruners()[criterion]
    with compat.tracing():
        pruner = pruner_cls(theirs, SHAPE)
    x = paddle.randn(SHAPE)
    for group in list(pm.groups)[:3]:
        applied = pm.apply({group: 0.4})
        with compat.quiet_paddleslim():
            plan = pruner.prune_var(dict(theirs.named_parameters())[group].name, 0, 0.4)
        a, b = state(ours), {k: v for k, v in state(theirs).items() if not k.endswith("_backup")}
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{group}: {key}")
        np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-6)
        applied.restore()
        plan.restore(theirs)
        for key, value in state(ours).items():
            np.testing.assert_array_equal(value, original[key])


def test_prune_keeps_no_backup_and_prunes_optimizer_state():
    net = make_net()
    net.train()
    opt = paddle.optimizer.Adam(parameters=net.parameters())
    loss = net(paddle.randn([2, 3, 16, 16])).mean()
    loss.backward()
    opt.step()
    pm = PrunableModel(net, SHAPE)
    pm.prune({"conv1.weight": 0.5}, optimizer=opt, check_inputs=[paddle.randn(SHAPE)])
    assert list(net.conv1.weight.shape) == [8, 3, 3, 3]
    assert not any("backup" in k for k in net.state_dict())
    net(paddle.randn([2, 3, 16, 16])).mean().backward()
    opt.step()  # accumulators have the pruned shapes


class Reshaping(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2D(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv2(self.conv(x))
        # the literal 8 is invisible in the program (a static shape either way): pruning conv2
        # passes the graph and breaks only when the model runs
        return self.fc(paddle.reshape(y, [0, 8, -1]).mean(-1))


def test_failed_prune_restores_model_and_names_group():
    net = Reshaping()
    before = state(net)
    pm = PrunableModel(net, SHAPE)
    group = next(iter(pm.groups))
    with pytest.raises(PruneError) as err:
        pm.prune({g: 0.5 for g in pm.groups}, check_inputs=[paddle.randn(SHAPE)])
    assert "conv" in str(err.value) and "prune.skip" in str(err.value)
    for key, value in state(net).items():
        np.testing.assert_array_equal(value, before[key])
    assert group


def test_ratio_choice_matches_paddleslim():
    from paddleslim.dygraph.prune.filter_pruner import FilterPruner

    rng = np.random.RandomState(3)
    sens = {}
    for g in range(30):
        losses = np.cumsum(rng.uniform(-0.01, 0.05, 9))
        sens[f"g{g}"] = {round(0.1 * (i + 1), 2): float(l) for i, l in enumerate(losses)}
    for budget in (0.01, 0.02, 0.05, 0.1):
        theirs = FilterPruner._get_ratios_by_loss(None, sens, budget)
        ours = ratios_by_loss(sens, budget)
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert ours[k] == pytest.approx(theirs[k], abs=1e-12)


def test_align_and_fixed_ratios():
    assert align_ratios({"a": 0.3}, {"a": 64}, 8) == {"a": 0.25}  # keeps 48
    assert align_ratios({"a": 0.99}, {"a": 64}, 8) == {"a": 0.875}  # at least one multiple
    pm = PrunableModel(make_net(), SHAPE)
    assert set(fixed_ratios(pm, {"conv1.*": 0.5})) == {"conv1.weight"}
    with pytest.raises(OptionError, match="matches no prunable group"):
        fixed_ratios(pm, {"backbone.nothing*": 0.5})
    with pytest.raises(OptionError, match="outside"):
        fixed_ratios(pm, {"conv1.*": 1.5})


class CountingMetric:
    """Accuracy-like metric on a fixed batch: agreement with the unpruned model's argmax."""

    def __init__(self, net):
        self.net = net
        self.x = paddle.randn([64, 3, 16, 16])
        self.reference = net(self.x).numpy().argmax(1)
        self.calls = 0

    def __call__(self, max_batches=None):
        self.calls += 1
        return float((self.net(self.x).numpy().argmax(1) == self.reference).mean())


def sens_file(path, net, metric="agree"):
    return SensitivityFile.open(str(path), model_fingerprint=architecture_fingerprint(net),
                                weights=weights_fingerprint(net), metric=metric, criterion="l1_norm",
                                max_batches=None)


def test_sensitivity_resume_recomputes_nothing_and_cap_skips(tmp_path):
    net = make_net()
    counting = CountingMetric(net)
    metric = Metric("agree", counting)
    pm = PrunableModel(net, SHAPE)
    groups = list(pm.groups)
    path = tmp_path / "sens.json"
    analyze(pm, metric, sens_file(path, net), groups=groups, cap=0.2, show_progress=False)
    first_calls = counting.calls
    data = json.loads(path.read_text())
    assert data["metric"]["baseline"] == 1.0
    for name, group in data["groups"].items():
        losses = [e["loss"] for _, e in sorted(group["ratios"].items(), key=lambda kv: float(kv[0]))]
        assert all(l <= 0.2 for l in losses[:-1])  # stopped after the first loss over the cap
    analyze(pm, metric, sens_file(path, net), groups=groups, cap=0.2, show_progress=False)
    assert counting.calls == first_calls  # baseline included
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_sensitivity_file_of_another_model_or_metric_is_refused(tmp_path):
    net = make_net()
    path = tmp_path / "sens.json"
    analyze(PrunableModel(net, SHAPE), Metric("agree", CountingMetric(net)), sens_file(path, net),
            groups=["conv1.weight"], ratios=[0.5], show_progress=False)
    with pytest.raises(SensitivityFileError, match="another model architecture"):
        sens_file(path, Reshaping())
    with pytest.raises(SensitivityFileError, match="other weights"):
        sens_file(path, make_net(seed=1))
    with pytest.raises(SensitivityFileError, match="metric is 'agree'"):
        sens_file(path, net, metric="mAP")


def test_split_ratios_then_merge_equals_one_run(tmp_path):
    net = make_net()
    metric = Metric("agree", CountingMetric(net))
    pm = PrunableModel(net, SHAPE)
    groups = list(pm.groups)
    whole, a, b = tmp_path / "whole.json", tmp_path / "a.json", tmp_path / "b.json"
    analyze(pm, metric, sens_file(whole, net), groups=groups, ratios=[0.2, 0.4, 0.6], show_progress=False)
    analyze(pm, metric, sens_file(a, net), groups=groups, ratios=[0.2, 0.6], show_progress=False)
    analyze(pm, metric, sens_file(b, net), groups=groups, ratios=[0.4], show_progress=False)
    merged = merge_files([str(a), str(b)], str(tmp_path / "merged.json"))
    assert merged.losses() == SensitivityFile.load(str(whole)).losses()
    other = tmp_path / "other.json"
    analyze(pm, metric, SensitivityFile.open(str(other), model_fingerprint="x", weights="y", metric="agree",
                                             criterion="l1_norm", max_batches=None),
            groups=groups[:1], ratios=[0.2], show_progress=False)
    with pytest.raises(SensitivityFileError, match="model_fingerprint differs"):
        merge_files([str(a), str(other)], str(tmp_path / "bad.json"))


def test_legacy_pickles_import_and_malicious_pickle_is_refused(tmp_path):
    from paddleslim.dygraph.prune.filter_pruner import Status

    status = Status()
    status.sensitivies = {"conv2d_0.w_0": {np.float64(0.1): 0.01, np.float64(0.2): 0.05}}
    status.save(str(tmp_path / "dygraph.pickle"))
    with open(tmp_path / "static.data", "wb") as f:
        pickle.dump({"conv2d_1.w_0": {0.1: 0.0, 0.2: 0.02}}, f)
    assert load_legacy(str(tmp_path / "dygraph.pickle")) == {"conv2d_0.w_0": {0.1: 0.01, 0.2: 0.05}}
    assert load_legacy(str(tmp_path / "static.data")) == {"conv2d_1.w_0": {0.1: 0.0, 0.2: 0.02}}
    doc = to_sensitivity_json(load_legacy(str(tmp_path / "static.data")), "static.data")
    assert doc["groups"]["conv2d_1.w_0"]["ratios"]["0.2"]["loss"] == 0.02

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.data", "wb") as f:
        pickle.dump({"conv2d_0.w_0": {0.1: Evil()}}, f)
    with pytest.raises(SensitivityFileError, match="refusing to load"):
        load_legacy(str(tmp_path / "evil.data"))
    assert not marker.exists()


def test_flops_target_is_not_overshot_by_groups_with_equal_or_negative_losses():
    # an undertrained model: pruning several groups costs nothing or even raises the metric
    share = {"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.2, "e": 0.1, "f": 0.1}
    sens = {"a": {0.5: -0.3}, "b": {0.5: -0.1}, "c": {0.5: 0.0}, "d": {0.5: 0.0},
            "e": {0.25: 0.0, 0.5: 0.0}, "f": {0.5: 0.4}}
    calls = []

    def pruned_fraction(ratios):
        calls.append(dict(ratios))
        return sum(share[g] * r for g, r in ratios.items())

    ratios, fraction, budget = ratios_for_flops(sens, 0.3, pruned_fraction)
    assert 0.3 <= fraction <= 0.32, (ratios, fraction)
    assert "f" not in ratios and {"a", "b"} <= set(ratios)  # the cheapest groups are the ones kept
    assert budget < 0.4
    ratios, fraction, _ = ratios_for_flops(sens, 0.1, pruned_fraction)
    assert ratios == {"a": 0.5} and fraction == pytest.approx(0.1)  # below 0: best group alone


def test_flops_target_and_plan_replay(tmp_path):
    net = make_net()
    inputs = [paddle.zeros(SHAPE)]
    base = measure.flops(net, inputs)
    pm = PrunableModel(net, SHAPE)
    sens = {g: {0.2: 0.01, 0.4: 0.02, 0.6: 0.05, 0.8: 0.2} for g in pm.groups}

    def pruned_fraction(ratios):
        applied = pm.apply(ratios)
        try:
            return (base - measure.flops(net, inputs)) / base
        finally:
            applied.restore()

    ratios, fraction, _ = ratios_for_flops(sens, 0.3, pruned_fraction)
    assert fraction >= 0.3
    with pytest.raises(OptionError, match="cannot be reached"):
        ratios_for_flops({g: {0.1: 0.0} for g in pm.groups}, 0.9, pruned_fraction)

    base_shapes = {n: list(p.shape) for n, p in net.named_parameters()}
    fp = architecture_fingerprint(net)
    pm.prune(ratios, check_inputs=inputs)
    plan = make_plan(pm, ratios, base_shapes, fp)
    plan.save(plan_path(str(tmp_path / "model.pdparams")))
    paddle.save(net.state_dict(), str(tmp_path / "model.pdparams"))
    assert find_plan(str(tmp_path / "model")) == str(tmp_path / "model.prune.json")

    fresh = Net()
    from slim_plugins.plugins.prune.plan import PrunePlan

    assert replay(fresh, PrunePlan.load(find_plan(str(tmp_path / "model.pdparams"))))
    fresh.set_state_dict(paddle.load(str(tmp_path / "model.pdparams")))
    fresh.eval()
    x = paddle.randn(SHAPE)
    np.testing.assert_allclose(fresh(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    assert not replay(fresh, plan)  # already pruned: nothing to do
    with pytest.raises(PruneError, match="another model"):
        replay(Reshaping(), plan)


class Untraceable(nn.Layer):
    """A layer whose forward only works in dygraph (it reads a tensor's data in numpy)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(3, 8, 3)

    def forward(self, x):
        if np.asarray(x).mean() > 1e9:  # a static value has no data: to_static cannot convert this
            return x
        return self.conv(x)


def test_trace_error_names_the_layer_and_paddle_version():
    from slim_plugins.errors import TraceError

    model = nn.Sequential(nn.Conv2D(3, 3, 1), Untraceable())
    with pytest.raises(TraceError) as err:
        PrunableModel(model, SHAPE)
    line = Untraceable.forward.__code__.co_firstlineno + 1
    assert f"layer 1 (Untraceable, test_prune_engine.py:{line})" in str(err.value)
    assert paddle.__version__ in str(err.value)


class FailsAfterItsChild(nn.Layer):
    """The failing call is the parent's own, after its child layer returned."""

    def __init__(self):
        super().__init__()
        self.child = nn.Sequential(nn.Conv2D(3, 8, 3), nn.BatchNorm2D(8))

    def forward(self, x):
        y = self.child(x)
        return y * float(np.asarray(y).mean())


def test_trace_error_names_the_parent_when_its_own_call_fails():
    from slim_plugins.errors import TraceError

    with pytest.raises(TraceError) as err:
        PrunableModel(nn.Sequential(FailsAfterItsChild()), SHAPE)
    line = FailsAfterItsChild.forward.__code__.co_firstlineno + 2
    assert f"in layer 0 (FailsAfterItsChild, test_prune_engine.py:{line})" in str(err.value)


def test_sensitivity_survives_a_group_that_breaks_the_model(tmp_path):
    net = Reshaping()  # pruning conv2 breaks the reshape before fc: PaddleSlim still offers the group
    x = paddle.randn([4] + SHAPE[1:])
    reference = net(x).numpy()

    def agreement(max_batches=None):
        return float(1.0 / (1.0 + np.abs(net(x).numpy() - reference).mean()))

    pm = PrunableModel(net, SHAPE)
    assert "conv2.weight" in pm.groups
    path = tmp_path / "sens.json"
    analyze(pm, Metric("agree", agreement), sens_file(path, net), groups=list(pm.groups), ratios=[0.25, 0.5],
            show_progress=False)
    data = json.loads(path.read_text())
    broken = data["groups"]["conv2.weight"]
    assert broken["failed"]["ratio"] == "0.25" and broken["failed"]["error"]
    assert broken["ratios"] == {}  # 0.5 was not tried after 0.25 broke the model
    assert set(data["groups"]["conv.weight"]["ratios"]) == {"0.25", "0.5"}
    np.testing.assert_allclose(net(x).numpy(), reference)  # restored
    calls = []
    analyze(pm, Metric("agree", lambda max_batches=None: calls.append(1) or 1.0), sens_file(path, net),
            groups=list(pm.groups), ratios=[0.25, 0.5], show_progress=False)
    assert calls == []  # resumed: the broken group is not retried
    losses = SensitivityFile.load(str(path)).losses()
    assert ratios_by_loss({g: l for g, l in losses.items() if l}, 1.0) == {"conv.weight": 0.5}


class Depthwise(nn.Layer):
    """A depthwise conv fed by a 2-channel producer: a ratio of 0.5 leaves one channel, groups 1."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(3, 2, 3, padding=1)
        self.bn = nn.BatchNorm2D(2)
        self.dw = nn.Conv2D(2, 2, 3, padding=1, groups=2)
        self.head = nn.Conv2D(2, 4, 1)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        y = self.head(self.dw(nn.functional.relu(self.bn(self.stem(x)))))
        return self.norm(y.flatten(2).transpose([0, 2, 1]))


def test_plan_records_every_pruned_layer_and_replays_one_channel_depthwise(tmp_path):
    from slim_plugins.plugins.prune.plan import PrunePlan

    net = Depthwise()
    net.eval()
    base_shapes = {n: list(p.shape) for n, p in net.named_parameters()}
    base_fp = architecture_fingerprint(net)
    pm = PrunableModel(net, SHAPE)
    assert set(pm.groups) == {"stem.weight"}  # head feeds the model output
    pm.prune({"stem.weight": 0.5}, check_inputs=[paddle.randn(SHAPE)])
    assert net.dw._groups == 1 and list(net.dw.weight.shape) == [1, 1, 3, 3]
    plan = make_plan(pm, {"stem.weight": 0.5}, base_shapes, base_fp)
    assert plan.layer_groups["dw"] == 1  # groups 1 is recorded too: replay must not keep 2
    assert plan.layer_attrs["bn"]["_num_features"] == 1
    plan.save(str(tmp_path / "m.prune.json"))
    paddle.save(net.state_dict(), str(tmp_path / "m.pdparams"))
    fresh = Depthwise()
    replay(fresh, PrunePlan.load(str(tmp_path / "m.prune.json")))
    fresh.set_state_dict(paddle.load(str(tmp_path / "m.pdparams")))
    fresh.eval()
    x = paddle.randn(SHAPE)
    np.testing.assert_allclose(fresh(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_failed_prune_restores_optimizer_state():
    net = make_net()
    opt = paddle.optimizer.Adam(parameters=net.parameters())
    net.train()
    net(paddle.randn(SHAPE)).mean().backward()
    opt.step()
    pm = PrunableModel(net, SHAPE)
    applied = pm.apply({"conv2.weight": 0.5}, optimizer=opt)
    applied.restore()
    net(paddle.randn(SHAPE)).mean().backward()
    opt.step()  # the moments were restored with the weights
    moments = [v for k, v in opt.state_dict().items() if k.startswith(net.conv2.weight.name + "_moment1")]
    assert list(moments[0].shape) == [32, 16, 3, 3]


class Untraceable_post(nn.Layer):
    """Post-processing to_static cannot convert (like paddledet's NMS on PIR): no parameters."""

    def forward(self, x):
        return paddle.to_tensor(np.asarray(x).argmax(1))


class Detector(nn.Layer):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2D(3, 8, 3)
        self.head = nn.Conv2D(8, 4, 1)
        self.post = Untraceable_post()

    def forward(self, x):
        return {"boxes": self.post(self.head(nn.functional.relu(self.body(x))))}


def test_untraceable_post_processing_excludes_only_what_reaches_it():
    from slim_plugins.plugins.prune.inventory import inventory

    model = Detector()
    model.eval()
    pm = PrunableModel(model, SHAPE, mode="eval")
    assert list(pm.groups) == ["body.weight"]
    rows = {r.weight: r for r in inventory(pm, [paddle.zeros(SHAPE)])}
    assert rows["head.weight"].status == "skipped"
    assert rows["head.weight"].reason.startswith("feeds post (Untraceable_post), which paddle.jit.to_static cannot")
    assert "forward" not in model.post.__dict__  # the stand-in is gone
    pm.prune({"body.weight": 0.5}, check_inputs=[paddle.zeros(SHAPE)])
    assert list(model.head.weight.shape) == [4, 4, 1, 1]
@pytest.mark.parametrize("failure", ["dies", "stalls"])
def test_a_worker_that_dies_or_stalls_ends_the_analysis_naming_it(tmp_path, failure):
    import time

    from slim_plugins.errors import SlimPluginsError
    from slim_plugins.plugins.prune.sensitivity import analyze_parallel

    net = make_net()
    parent = os.getpid()
    pm = PrunableModel(net, SHAPE)
    groups = list(pm.groups)

    def evaluate(max_batches=None):
        if os.getpid() != parent and pm.groups[groups[1]].channels != _channels(net, groups[1]):
            if failure == "dies":
                os._exit(3)
            time.sleep(600)
        return 1.0

    path = tmp_path / "sens.json"
    start = time.monotonic()
    with pytest.raises(SlimPluginsError) as err:
        analyze_parallel(pm, Metric("agree", evaluate), sens_file(path, net), groups=groups[:2], ratios=[0.5],
                         workers=2, show_progress=False, stall_timeout=3)
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert f"at group {groups[1]} ratio 0.5" in message and "sensitivity worker 1" in message
    assert ("exited (3)" if failure == "dies" else "sent nothing for 3 s: stalled") in message
    assert "run again to resume" in message
    assert groups[1] not in json.loads(path.read_text())["groups"] or \
        not json.loads(path.read_text())["groups"][groups[1]]["ratios"]


def _channels(net, group):
    return dict(net.named_parameters())[group].shape[0]


# ------------------------------------------------------------------ budgets for the whole model (issue 13)
class ChannelsMetric:
    """A metric that falls monotonically as the pruned groups lose channels (read off the real,
    pruned conv weights), with a different steepness per group; counts its evaluations."""

    def __init__(self, net, steepness):
        self.net = net
        self.full = {name: getattr(net, name).weight.shape[0] for name in steepness}
        self.steepness = steepness
        self.calls = 0

    def __call__(self, max_batches=None):
        self.calls += 1
        loss = sum(k * (1 - getattr(self.net, name).weight.shape[0] / self.full[name]) ** 2
                   for name, k in self.steepness.items())
        return 1.0 - loss


@pytest.mark.parametrize("ratios", [DEFAULT_RATIOS, [round(0.05 * i, 2) for i in range(1, 20)]])
def test_crossing_search_chooses_the_scan_ratio_with_fewer_evaluations(tmp_path, ratios):
    net = make_net()
    counting = ChannelsMetric(net, {"conv1": 0.05, "conv2": 0.3})
    pm = PrunableModel(net, SHAPE)
    groups = ["conv1.weight", "conv2.weight"]
    total = {"every": 0, "scan": 0, "search": 0}
    for cap in (0.01, 0.02, 0.05, 0.1):
        calls, chosen = {}, {}
        for how, search, cap_of_run in (("every", False, None), ("scan", False, cap), ("search", True, cap)):
            path = tmp_path / f"{how}-{cap}.json"
            counting.calls = 0
            analyze(pm, Metric("m", counting), sens_file(path, net, "m"), groups=groups, ratios=ratios,
                    cap=cap_of_run, show_progress=False, search=search)
            calls[how] = counting.calls
            total[how] += calls[how]
            losses = SensitivityFile.load(str(path)).losses()
            chosen[how] = {g: ratio_under_budget(losses[g], cap) for g in groups}
        assert chosen["search"] == chosen["scan"] == chosen["every"], cap
        assert any(chosen["scan"].values()), cap  # the budget prunes something: the test says something
        assert calls["search"] <= 1 + len(groups) * crossing_evaluations(len(ratios)), calls
        assert calls["search"] <= calls["scan"] + len(groups), (cap, calls)  # at most one more per group
        counting.calls = 0  # resumed: every point is read from the file
        analyze(pm, Metric("m", counting), sens_file(tmp_path / f"search-{cap}.json", net, "m"), groups=groups,
                ratios=ratios, cap=cap, show_progress=False, search=True)
        assert counting.calls == 0
    assert total["search"] < total["scan"] < total["every"], total
    data = json.loads((tmp_path / "search-0.1.json").read_text())  # the file format: records per ratio
    assert all(set(e) >= {"metric", "loss", "seconds"} for g in data["groups"].values() for e in g["ratios"].values())


@pytest.fixture(scope="module")
def trained_digits():
    """A small CNN trained on all of scikit-learn's digits, its accuracy and its prunable model."""
    from conftest import digits_cnn

    net, x, labels = digits_cnn()

    def accuracy(max_batches=None):
        with paddle.no_grad():
            return float((net(x).numpy().argmax(1) == labels).mean())

    return net, accuracy, PrunableModel(net, [1, 1, 8, 8])


def whole_model_loss(pm, accuracy, baseline):
    def loss_of(ratios):
        applied = pm.apply(ratios)
        try:
            return relative_loss(baseline, accuracy())
        finally:
            applied.restore()
    return loss_of


def test_back_off_keeps_the_whole_model_within_the_budget(tmp_path, trained_digits):
    net, accuracy, pm = trained_digits
    budget = 0.2
    sfile = analyze(pm, Metric("acc", accuracy), sens_file(tmp_path / "s.json", net, "acc"), groups=list(pm.groups),
                    cap=budget, search=True, show_progress=False)
    sens = {g: l for g, l in sfile.losses().items() if l}
    loss_of = whole_model_loss(pm, accuracy, sfile.baseline)
    per_group = ratios_by_loss(sens, budget)
    assert len(per_group) >= 2 and loss_of(per_group) > budget  # each group alone holds, together they do not
    ratios, loss, scale, evaluations = back_off(sens, budget, loss_of)
    assert ratios and 0 < scale < 1 and len(evaluations) <= 8
    assert loss <= budget and loss_of(ratios) == pytest.approx(loss)  # measured again: the model holds it
    assert set(ratios) <= set(per_group) and all(ratios[g] <= per_group[g] for g in ratios)
    assert accuracy() == sfile.baseline  # every trial restored


def test_pruned_flops_takes_the_candidate_with_the_lowest_measured_loss(tmp_path, trained_digits):
    net, accuracy, pm = trained_digits
    inputs = [paddle.zeros([1, 1, 8, 8])]
    base = measure.flops(net, inputs)
    sfile = analyze(pm, Metric("acc", accuracy), sens_file(tmp_path / "s.json", net, "acc"), groups=list(pm.groups),
                    show_progress=False)
    sens = sfile.losses()

    def flops_of(ratios):
        applied = pm.apply(ratios)
        try:
            return (base - measure.flops(net, inputs)) / base
        finally:
            applied.restore()

    measured = whole_model_loss(pm, accuracy, sfile.baseline)
    calls = []

    def loss_of(ratios):
        calls.append(dict(ratios))
        return measured(ratios)

    ratios, fraction, loss, candidates = plans_for_flops(sens, 0.3, flops_of, loss_of,
                                                         limits={g: 0.9 for g in sens})
    assert len(candidates) >= 3 and len(calls) <= 8
    assert all(c["fraction"] >= 0.3 for c in candidates)
    assert {c["plan"] for c in candidates} >= {"loss-budget bisection", "uniform"}
    assert candidates[0]["plan"] == "loss-budget bisection"
    assert loss == min(c["loss"] for c in candidates)
    assert flops_of(ratios) == pytest.approx(fraction)
    assert measured(ratios) == pytest.approx(loss)


def test_pruned_flops_candidates_beat_a_budget_plan_that_piles_onto_one_group():
    # per group, "a" looks free; pruned together with the others its loss explodes
    share = {"a": 0.4, "b": 0.3, "c": 0.3}
    sens = {g: {0.2: 0.01, 0.4: 0.02, 0.6: 0.04, 0.8: 0.08} for g in ("b", "c")}
    sens["a"] = {0.2: 0.0, 0.4: 0.0, 0.6: 0.0, 0.8: 0.001}

    def flops_of(ratios):
        return sum(share[g] * r for g, r in ratios.items())

    def loss_of(ratios):
        return sum(r ** 3 for r in ratios.values())

    ratios, fraction, loss, candidates = plans_for_flops(sens, 0.3, flops_of, loss_of, limits={g: 0.9 for g in share})
    by_budget = next(c for c in candidates if c["plan"] == "loss-budget bisection")
    assert loss < by_budget["loss"] and ratios != by_budget["ratios"]
    assert fraction >= 0.3 and fraction < 0.31


class ConvLSTM(nn.Layer):
    """CRNN in small: conv, BN, the feature map as a sequence (Im2Seq), bidirectional 2-layer LSTM."""

    def __init__(self, channels=8, mode="LSTM"):
        super().__init__()
        self.conv = nn.Conv2D(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2D(channels)
        rnn = nn.LSTM if mode == "LSTM" else nn.GRU
        self.rnn = rnn(channels, 6, direction="bidirectional", num_layers=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = nn.functional.max_pool2d(nn.functional.relu(self.bn(self.conv(x))), (4, 1))
        y = y.squeeze(axis=2).transpose([0, 2, 1])  # [batch, width, channels]
        return self.fc(self.rnn(y)[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_channels_feeding_an_lstm_are_pruned_with_its_first_layers_input_weights(tmp_path, mode):
    """The conv's kept channels contribute as before: the pruned model computes what a model built
    with 4 channels computes with the kept slices (first-layer input columns, both directions),
    in dygraph, after to_static export and after a plan replay; Adam's moments follow."""
    from slim_plugins.plugins.prune.plan import PrunePlan

    paddle.seed(0)
    net = ConvLSTM(mode=mode)
    x = paddle.randn([2, 3, 4, 10])
    opt = paddle.optimizer.Adam(parameters=net.parameters())
    net.train()
    net(x).mean().backward()
    opt.step()
    opt.clear_grad()
    net.eval()
    base_shapes = {n: list(p.shape) for n, p in net.named_parameters()}
    base_fp = architecture_fingerprint(net)
    pm = PrunableModel(net, [1, 3, 4, 10])
    assert list(pm.groups) == ["conv.weight"], pm.blocked
    members = set(pm.groups["conv.weight"].members)
    assert {"rnn.weight_ih_l0", "rnn.weight_ih_l0_reverse"} <= members
    assert not members & {"rnn.weight_ih_l1", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "fc.weight"}
    keep = np.flatnonzero(pm.masks({"conv.weight": 0.5})[net.conv.weight.name][0][1])
    original = state(net)
    pm.prune({"conv.weight": 0.5}, optimizer=opt, check_inputs=[x])
    assert len(keep) == 4 and list(net.rnn.weight_ih_l0.shape)[1] == 4 and net.rnn.input_size == 4
    assert list(net.rnn.weight_ih_l1.shape) == list(original["rnn.weight_ih_l1"].shape)  # hidden sizes stay

    sliced = ConvLSTM(channels=4, mode=mode)
    cut = {"conv.weight": 0, "conv.bias": 0, "bn.weight": 0, "bn.bias": 0, "bn._mean": 0, "bn._variance": 0,
           "rnn.weight_ih_l0": 1, "rnn.weight_ih_l0_reverse": 1,
           "rnn.0.cell_fw.weight_ih": 1, "rnn.0.cell_bw.weight_ih": 1}  # the same two, by their cells
    sliced.set_state_dict({k: np.take(v, keep, axis=cut[k]) if k in cut else v for k, v in original.items()})
    sliced.eval()
    expected = sliced(x).numpy()
    with paddle.no_grad():
        np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    moments = [v for k, v in opt._accumulators.items() if "moment1" in k]
    assert moments and list(moments[0][net.rnn.weight_ih_l0.name].shape) == [net.rnn.weight_ih_l0.shape[0], 4]
    net.train()
    net(x).mean().backward()
    opt.step()  # the accumulators have the pruned shapes
    net.eval()

    exported = paddle.jit.to_static(net, input_spec=[paddle.static.InputSpec([None, 3, 4, 10], "float32")],
                                    full_graph=True)
    paddle.jit.save(exported, str(tmp_path / "inference"))
    loaded = paddle.jit.load(str(tmp_path / "inference"))
    loaded.eval()
    np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)

    plan = make_plan(pm, {"conv.weight": 0.5}, base_shapes, base_fp)
    assert plan.layer_attrs["rnn"]["input_size"] == 4
    plan.save(str(tmp_path / "m.prune.json"))
    fresh = ConvLSTM(mode=mode)
    replay(fresh, PrunePlan.load(str(tmp_path / "m.prune.json")))
    fresh.set_state_dict(net.state_dict())
    fresh.eval()
    np.testing.assert_allclose(fresh(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
