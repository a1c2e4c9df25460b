"""`slim-plugins list` and `slim-plugins sens ...` on real files."""
import importlib.util
import json
import pickle
import re
from importlib import metadata

from slim_plugins.cli import main
from slim_plugins.plugins.prune.sensitivity import SensitivityFile


def make_file(path, groups, baseline=0.9):
    sfile = SensitivityFile.new(str(path), model_fingerprint="m", weights="w", metric="acc",
                                criterion="l1_norm", max_batches=None)
    sfile.set_baseline(baseline, 0.1)
    for name, points in groups.items():
        for ratio, metric in points.items():
            sfile.record(name, ratio, metric, 0.1)
    sfile.save()
    return sfile


def test_list_shows_plugins_adapters_and_the_matching_adapter(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("import paddle\nfrom paddle.static import InputSpec\n")
    assert main(["list", "--script", str(script), "--no-suites"]) == 0
    out = capsys.readouterr().out
    assert "prune" in out and "builtin" in out and "built-in" in out
    assert f"{script}: adapter builtin" in out


def row(out, first):
    """The cells of the table row that starts with ``first``."""
    line = next(line for line in out.splitlines() if line.split() and line.split()[0] == first)
    return re.split(r"\s{2,}", line.strip())


def test_list_shows_every_option_with_type_default_and_help(capsys):
    from slim_plugins.config import declared_options
    from slim_plugins.plugins.prune.options import PruneOptions

    assert main(["list", "--no-suites"]) == 0
    out = capsys.readouterr().out
    for option in declared_options(PruneOptions):
        assert row(out, f"--prune.{option.name}")[-1].startswith(option.plain_help)
    assert row(out, "--prune.eval_metric_loss")[1:3] == ["float in [0, 1) | None", "-"]
    assert row(out, "--prune.criterion")[1:3] == ["str", "l1_norm"]
    assert row(out, "--prune.sen_ratios")[1:3] == ["non-empty list[float in (0, 1)]",
                                                   "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"]
    assert row(out, "--prune.plot")[1:3] == ["bool", "true"]
    assert row(out, "--prune.sen_file")[2] == "<save_dir>/sensitivities.json"  # what None means
    assert "(one of" not in row(out, "--prune.criterion")[-1]  # the help names the choices already


def test_list_shows_each_suite_its_support_and_its_patches(capsys):
    """The patch columns come from a fresh interpreter that imports each installed suite, as
    the suite's train command does: the start-up hook must patch it there, the loads (and config
    readers) only until a plugin is enabled, everything after."""
    import paddle

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("start-up hook: ok (")
    expected = ["yes", "ok", "loads, config", "installed"]
    assert row(out, "builtin")[1:] == [f"paddlepaddle {paddle.__version__}"] + expected
    for adapter, dist in (("ppdet", "paddledet"), ("paddlex", "paddlex")):
        if importlib.util.find_spec(adapter) is not None:
            assert row(out, adapter)[1:] == [f"{dist} {metadata.version(dist)}"] + expected


def test_sens_show_plot_ratios_merge_import(tmp_path, capsys):
    a = make_file(tmp_path / "a.json", {"conv1.weight": {0.1: 0.9, 0.2: 0.88}})
    make_file(tmp_path / "b.json", {"conv1.weight": {0.3: 0.8}, "conv2.weight": {0.1: 0.7}})
    assert main(["sens", "merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    merged = SensitivityFile.load(str(tmp_path / "m.json"))
    assert set(merged.losses()["conv1.weight"]) == {0.1, 0.2, 0.3}
    capsys.readouterr()
    assert main(["sens", "show", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "conv2.weight" in out and "+0.2222" in out  # (0.9 - 0.7) / 0.9
    assert main(["sens", "ratios", str(tmp_path / "m.json"), "--eval-metric-loss", "0.05"]) == 0
    ratios = json.loads(capsys.readouterr().out)["ratios"]
    assert 0.2 < ratios["conv1.weight"] < 0.3
    assert main(["sens", "plot", str(tmp_path / "m.json"), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "old.sensi.data", "wb") as f:
        pickle.dump({"conv2d_0.w_0": {0.1: 0.01, 0.2: 0.03}}, f)
    assert main(["sens", "import", str(tmp_path / "old.sensi.data"), str(tmp_path / "imp.json")]) == 0
    assert SensitivityFile.load(str(tmp_path / "imp.json")).losses() == {"conv2d_0.w_0": {0.1: 0.01, 0.2: 0.03}}
    capsys.readouterr()
    assert main(["sens", "show", str(tmp_path / "imp.json")]) == 0  # an imported file names no metric yet
    out = capsys.readouterr().out
    assert "None" not in out and "metric not named yet" in out and "conv2d_0.w_0" in out
    assert a.path


def test_errors_are_one_line_with_a_hint(tmp_path, capsys):
    make_file(tmp_path / "a.json", {"c": {0.1: 0.9}})
    other = SensitivityFile.new(str(tmp_path / "o.json"), model_fingerprint="other", weights="w", metric="acc",
                                criterion="l1_norm", max_batches=None)
    other.save()
    assert main(["sens", "merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "model_fingerprint differs" in err and "hint:" in err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["sens", "show", str(tmp_path / "bad.json")]) == 2
    assert "not a slim-plugins sensitivity file" in capsys.readouterr().err


def test_a_pickle_given_to_sens_show_or_plot_says_to_import_it(tmp_path, capsys):
    with open(tmp_path / "old.sensi.data", "wb") as f:
        pickle.dump({"conv2d_0.w_0": {0.1: 0.01}}, f)
    for command in ("show", "plot"):
        assert main(["sens", command, str(tmp_path / "old.sensi.data")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "use slim-plugins sens import" in err
