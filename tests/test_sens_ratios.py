"""`slim-plugins sens ratios`: the plan in the suites' own terms, and the FLOPs it leaves, from the
sensitivity file alone (issue 14 item 3). The ppdet `--slim_config` round trip through ppdet's own
train command is in test_ppdet_adapter.py."""
import json

import paddle
import pytest
import yaml
from test_prune_engine import SHAPE, CountingMetric, make_net, sens_file

from slim_plugins.adapters.ppdet import legacy_pruner_options
from slim_plugins.cli import main
from slim_plugins.plugins.prune import flops_model, measure
from slim_plugins.plugins.prune.model import PrunableModel
from slim_plugins.plugins.prune.ratios import fixed_ratios
from slim_plugins.plugins.prune.sensitivity import SensitivityFile, analyze
from slim_plugins.run import Metric


@pytest.fixture
def analysed(tmp_path):
    """A model, its PrunableModel and a sensitivity file written as the prune plugin writes it."""
    net = make_net()
    pm = PrunableModel(net, SHAPE)
    inputs = [paddle.randn(SHAPE)]
    path = tmp_path / "sens.json"
    sfile = sens_file(path, net)
    analyze(pm, Metric("agree", CountingMetric(net)), sfile, groups=list(pm.groups), ratios=[0.25, 0.5, 0.75],
            show_progress=False)
    sfile.data["flops"] = flops_model.record(pm, inputs, list(pm.groups))
    sfile.save()
    return net, pm, inputs, path


def measured(net, pm, inputs, ratios):
    applied = pm.apply(ratios)
    try:
        return measure.flops(net, inputs)
    finally:
        applied.restore()


def test_flops_model_matches_the_pruned_model(analysed):
    net, pm, inputs, path = analysed
    data = json.loads(path.read_text())["flops"]
    channels = {g: pm.groups[g].channels for g in pm.groups}
    assert data["total"] == measure.flops(net, inputs)
    groups = list(pm.groups)
    cases = [{groups[0]: 0.3}, {g: 0.2 + 0.1 * i for i, g in enumerate(groups)}]
    cases += [{g: r for g in groups} for r in (0.1, 0.3, 0.5, 0.7, 0.9)]  # a residual group: in and out
    for ratios in cases:
        real = measured(net, pm, inputs, ratios)
        assert flops_model.estimate(data, channels, ratios) == pytest.approx(real, rel=1e-4), ratios


def test_sens_ratios_in_json_ppdet_and_paddleslim_terms(analysed, capsys):
    net, pm, inputs, path = analysed
    assert main(["sens", "ratios", str(path), "--pruned-flops", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    ratios = out["ratios"]
    assert ratios and set(ratios) <= set(pm.groups)
    real = measured(net, pm, inputs, ratios)
    assert out["flops"]["before"] == measure.flops(net, inputs)
    assert out["flops"]["after"] == pytest.approx(real, rel=0.005)
    assert out["flops"]["pruned"] >= 0.3
    after = pm.channels_after(ratios)
    assert out["kept_channels"] == {g: [after[g], pm.groups[g].channels] for g in ratios}

    # PaddleSlim's names: what FilterPruner.prune_vars takes
    assert main(["sens", "ratios", str(path), "--pruned-flops", "0.3", "--format", "paddleslim"]) == 0
    captured = capsys.readouterr()
    named = json.loads(captured.out)
    assert named == {pm.groups[g].master: r for g, r in ratios.items()}
    assert "FLOPs" in captured.err and "-3" in captured.err

    # ppdet's `slim: Pruner` section, read by the same code as ppdet's --slim_config route
    assert main(["sens", "ratios", str(path), "--pruned-flops", "0.3", "--format", "ppdet"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["slim"] == "Pruner" and config["Pruner"]["criterion"] == "l1_norm"
    options = legacy_pruner_options(config["Pruner"])
    assert fixed_ratios(pm, options["ratios"]) == ratios


def test_sens_ratios_on_files_without_flops_or_names(analysed, tmp_path, capsys):
    _, _, _, path = analysed
    sfile = SensitivityFile.load(str(path))
    del sfile.data["flops"]
    for group in sfile.data["groups"].values():
        group.pop("legacy_name")
    sfile.path = str(tmp_path / "old.json")
    sfile.save()
    assert main(["sens", "ratios", sfile.path, "--pruned-flops", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "records no per-layer FLOPs, so --pruned-flops needs the model" in err
    assert "--prune.sen_analyze false --prune.action analyze" in err
    assert main(["sens", "ratios", sfile.path, "--eval-metric-loss", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratios"] and out["flops"] is None and "the model is needed" in out["flops_note"]
    assert main(["sens", "ratios", sfile.path, "--eval-metric-loss", "0.5", "--format", "ppdet"]) == 2
    assert "records no PaddleSlim name" in capsys.readouterr().err


def test_sens_plot_takes_the_output_as_a_positional(analysed, tmp_path, capsys):
    _, _, _, path = analysed
    pytest.importorskip("matplotlib")
    assert main(["sens", "plot", str(path), str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_flops_model_is_exact_for_a_conv_fed_by_a_concat_of_two_groups():
    """Two groups' channels concatenated into one conv remove its FLOPs additively, not as a
    product of two factors (which over-counted what is left: 2% on PicoDet's LCPAN)."""
    import paddle.nn as nn

    class Concat(nn.Layer):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2D(3, 8, 3, padding=1), nn.Conv2D(3, 16, 3, padding=1)
            self.fuse = nn.Conv2D(24, 8, 3, padding=1)

        def forward(self, x):
            return self.fuse(paddle.concat([self.a(x), self.b(x)], axis=1))

    paddle.seed(0)
    net = Concat()
    pm = PrunableModel(net, [1, 3, 8, 8])
    inputs = [paddle.randn([1, 3, 8, 8])]
    data = json.loads(json.dumps(flops_model.record(pm, inputs, ["a.weight", "b.weight"])))  # as the file keeps it
    assert data["inputs"] == {"a.weight": ["fuse"], "b.weight": ["fuse"]}
    channels = {g: pm.groups[g].channels for g in pm.groups}
    for ratios in ({"a.weight": 0.5, "b.weight": 0.5}, {"a.weight": 0.25, "b.weight": 0.75}):
        assert flops_model.estimate(data, channels, ratios) == pytest.approx(measured(net, pm, inputs, ratios),
                                                                            rel=1e-6), ratios
