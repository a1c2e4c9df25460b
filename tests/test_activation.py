"""--plugin on the command line, the environment, YAML sections and Python: switching on and
configuring plugins, and the errors users see."""
import json
import sys
import types

import pluggy
import pytest

from slim_plugins import _boot, hookimpl
from slim_plugins.errors import OptionError, UnknownPluginError
from slim_plugins.session import Session


def test_split_argv_takes_out_only_slim_options():
    argv = ["-c", "cfg.yml", "--plugin", "prune", "--prune.eval_metric_loss", "0.05", "-o",
            "a.b=1", "--plugin=no:other", "--prune.skip=head.*", "--eval", "--plugin-config", "s.yml"]
    rest, plugins, options, config = _boot.split_argv(argv)
    assert rest == ["-c", "cfg.yml", "-o", "a.b=1", "--eval"]
    assert plugins == ["prune", "no:other"]
    assert options == {"prune": {"eval_metric_loss": "0.05", "skip": "head.*"}}
    assert config == "s.yml"


def test_split_argv_leaves_dotted_options_of_unnamed_plugins():
    rest, plugins, options, _ = _boot.split_argv(["--lr.decay", "0.1", "--x"])
    assert rest == ["--lr.decay", "0.1", "--x"] and not plugins and not options


def test_activation_strips_argv_and_exports_environment():
    env = {}
    argv = ["train.py", "-c", "c.yml", "--plugin", "prune", "--prune.criterion", "fpgm"]
    _boot._activated = False
    try:
        _boot.activate(argv=argv, environ=env)
    finally:
        _boot._activated = True
    assert argv == ["train.py", "-c", "c.yml"]
    assert env[_boot.ENV_PLUGINS] == "prune"
    assert json.loads(env[_boot.ENV_OPTIONS]) == {"prune": {"criterion": "fpgm"}}


def test_a_flag_followed_by_another_option_is_true():
    rest, _, options, _ = _boot.split_argv(["--plugin", "prune", "--prune.plot", "--eval", "--prune.skip", "a.*"])
    assert rest == ["--eval"] and options == {"prune": {"plot": "true", "skip": "a.*"}}


OWN_PROGRAM = """
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--plugin")
parser.add_argument("--db.host")
parser.add_argument("--prune.ratios")
args = parser.parse_args()
watching = any(type(f).__name__ == "_Watcher" for f in sys.meta_path)
print(json.dumps({"argv": sys.argv, "env": dict(os.environ), "args": vars(args), "watching": watching}))
"""


def test_a_program_that_does_not_import_paddle_keeps_its_arguments_and_environment(tmp_path):
    """The start-up hook runs in every interpreter of the environment: a non-paddle program with
    its own --plugin option sees the same argv and environment as without slim-plugins."""
    import subprocess

    from conftest import clean_env

    (tmp_path / "own.py").write_text(OWN_PROGRAM)
    argv = ["--plugin", "protoc-gen-grpc=/usr/bin/grpc", "--db.host", "x", "--plugin", "prune",
            "--prune.ratios", "a=0.5"]
    seen = {}
    for disable in ("1", ""):
        env = clean_env({_boot.ENV_DISABLE: disable})
        proc = subprocess.run([sys.executable, "own.py"] + argv, cwd=str(tmp_path), env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        seen[disable] = json.loads(proc.stdout)
    assert seen[""]["watching"] and not seen["1"]["watching"], "the start-up hook did not run: install normally"
    for result in seen.values():
        result["env"].pop(_boot.ENV_DISABLE)
        result.pop("watching")
    assert seen[""] == seen["1"]
    assert seen[""]["argv"][1:] == argv


def test_environment_activation_and_options():
    env = {_boot.ENV_PLUGINS: "prune", _boot.ENV_OPTIONS: json.dumps({"prune": {"eval_metric_loss": "0.05"}})}
    session = Session(environ=env, autoload=False)
    assert session.is_enabled("prune")
    config = session.plugin_config("prune")
    assert config.eval_metric_loss == 0.05 and config.criterion == "l1_norm"
    assert config.source("eval_metric_loss") == "--prune.eval_metric_loss"


CLAIMED_SCRIPT = """
import argparse, json, os, sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.parse_args()  # before the suite is imported, as PaddleX scripts do
    print(json.dumps({"argv": sys.argv[1:], "plugins": os.environ.get("SLIM_PLUGINS"),
                      "options": json.loads(os.environ.get("SLIM_PLUGINS_OPTIONS") or "{}")}))
    if "--import" in sys.argv:
        import paddlex  # noqa: F401


main()
"""


def test_a_script_that_imports_a_suite_is_activated_at_start_up(tmp_path):
    import subprocess

    from conftest import clean_env

    (tmp_path / "train.py").write_text(CLAIMED_SCRIPT)
    proc = subprocess.run([sys.executable, "train.py", "out", "--plugin", "prune", "--prune.eval_metric_loss", "0.1"],
                          cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"argv": ["out"], "plugins": "prune",
                                       "options": {"prune": {"eval_metric_loss": "0.1"}}}


def test_unknown_plugin_lists_known_ones():
    with pytest.raises(UnknownPluginError) as err:
        Session(environ={_boot.ENV_PLUGINS: "prnue"}, autoload=False)
    assert "prnue" in str(err.value) and "known plugins: prune" in str(err.value)


def test_blocking_with_no_prefix():
    session = Session(environ={_boot.ENV_PLUGINS: "no:prune"}, autoload=False)
    assert session.infos["prune"].blocked
    assert session.pm.get_plugin("prune") is None and session.pm.is_blocked("prune")
    assert not session.is_enabled("prune")


def test_disabling_a_plugin_stops_every_hook_of_it():
    """A disabled plugin's plan keeping must not fire either (it did with a private blocked set)."""
    session = Session(environ={}, autoload=False)
    assert any(impl.plugin_name == "prune" for impl in session.pm.hook.slim_before_load_weights.get_hookimpls())
    session.disable("prune")
    assert not any(impl.plugin_name == "prune" for impl in session.pm.hook.slim_before_load_weights.get_hookimpls())
    assert session.infos["prune"].blocked


def test_unknown_and_invalid_options_name_value_and_choices(slim_session):
    with pytest.raises(OptionError) as err:
        slim_session.enable("prune", {"eval_metric_los": 0.1})
    assert "eval_metric_los" in str(err.value) and "eval_metric_loss" in str(err.value)

    session = Session(environ={}, autoload=False)
    with pytest.raises(OptionError) as err:
        session.enable("prune", {"criterion": "l3"})
    assert "'l3'" in str(err.value) and "fpgm" in str(err.value)

    session = Session(environ={}, autoload=False)
    with pytest.raises(OptionError, match="eval_metric_loss='a lot'"):
        session.enable("prune", {"eval_metric_loss": "a lot"})


def test_yaml_section_and_precedence(tmp_path):
    cfg = tmp_path / "train.yml"
    cfg.write_text("epoch: 3\nplugins:\n  prune:\n    eval_metric_loss: 0.02\n    criterion: fpgm\n")
    env = {_boot.ENV_CONFIG: str(cfg), _boot.ENV_PLUGINS: "",
           _boot.ENV_OPTIONS: json.dumps({"prune": {"criterion": "l2_norm"}})}
    session = Session(environ=env, autoload=False)
    assert session.is_enabled("prune")
    config = session.plugin_config("prune")
    assert config.eval_metric_loss == 0.02  # from YAML
    assert config.criterion == "l2_norm"  # the command line wins over YAML
    session.give_options("prune", {"criterion": "fpgm"}, "yaml", "late.yml")
    assert session.plugin_config("prune").criterion == "l2_norm"
    from slim_plugins.plugins.prune.options import PruneOptions

    typed = config.typed(PruneOptions)  # what the workflow reads: checked values, declared defaults
    assert (typed.eval_metric_loss, typed.criterion, typed.sen_workers) == (0.02, "l2_norm", 1)
    assert typed.skip == [] and typed.skip is not PruneOptions().skip


def test_python_enable(slim_session):
    import slim_plugins

    slim_plugins.enable("prune", pruned_flops=0.3)
    assert slim_session.is_enabled("prune")
    assert slim_session.plugin_config("prune").pruned_flops == 0.3


def _fake_distribution(name, version, entry_points):
    class EP:
        def __init__(self, ep_name, obj):
            self.name, self.group, self.value, self._obj = ep_name, "slim_plugins", f"{name}.mod", obj

        def load(self):
            return self._obj

    dist = types.SimpleNamespace(metadata={"Name": name}, version=version,
                                 entry_points=[EP(n, o) for n, o in entry_points.items()])
    return dist


def test_entry_point_plugins_and_adapters_are_discovered(monkeypatch):
    from importlib import metadata

    from slim_plugins.adapters import Adapter

    class ThirdAdapter(Adapter):
        name = "third"
        modules = ("third_suite.engine",)

    adapter_module = types.SimpleNamespace()
    adapter_module.slim_register_adapters = hookimpl(lambda register: register(ThirdAdapter()))
    plugin_module = types.SimpleNamespace()
    plugin_module.slim_add_options = hookimpl(
        lambda register: register("quant", "bits", int, 8, "weight bits"))
    plugin_module.slim_before_train = hookimpl(lambda run: None)
    dists = [_fake_distribution("slim-third", "1.2", {"third": adapter_module, "quant": plugin_module})]
    monkeypatch.setattr(metadata, "distributions", lambda: iter(dists))

    session = Session(environ={_boot.ENV_PLUGINS: "quant"})
    assert session.infos["quant"].kind == "plugin"
    assert session.infos["quant"].origin == "entry point of slim-third 1.2"
    assert "third" in session.adapters and session.infos["third"].kind == "adapter"
    assert session.plugin_config("quant").bits == 8
    assert "third_suite.engine" in _boot.watcher.callbacks

    blocked = Session(environ={_boot.ENV_PLUGINS: "no:quant"})
    assert blocked.infos["quant"].blocked and blocked.pm.get_plugin("quant") is None

    assert blocked.pm.is_blocked("quant")  # pluggy's own blocking: none of its hooks can fire

    no_autoload = Session(environ={_boot.ENV_NO_AUTOLOAD: "1"})
    assert "quant" not in no_autoload.infos
    # like pytest's -p NAME: a plugin named on the command line loads from its entry point even
    # with autoload off; the others stay out
    named = Session(environ={_boot.ENV_NO_AUTOLOAD: "1", _boot.ENV_PLUGINS: "quant"})
    assert named.is_enabled("quant") and named.pm.get_plugin("quant") is not None
    assert "third" not in named.infos
    _boot.watcher.callbacks.pop("third_suite.engine", None)


def test_misspelt_hook_fails_loudly(slim_session):
    class Typo:
        @hookimpl
        def slim_befor_train(self, run):
            pass

    slim_session.pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="slim_befor_train"):
        slim_session.pm.check_pending()


def test_watcher_runs_callbacks_before_and_after_a_module_executes(tmp_path, monkeypatch):
    (tmp_path / "watched_suite_mod.py").write_text("import builtins\nSEEN = getattr(builtins, '_slim_seen', [])[:]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins

    events = []
    builtins._slim_seen = events
    try:
        _boot.watcher.watch_before("watched_suite_mod", lambda: events.append("before"))
        _boot.watcher.watch("watched_suite_mod", lambda m: events.append(("after", m.SEEN)))
        if _boot.watcher not in sys.meta_path:
            monkeypatch.setattr(sys, "meta_path", [_boot.watcher] + sys.meta_path)
        import watched_suite_mod  # noqa: F401
    finally:
        del builtins._slim_seen
        sys.modules.pop("watched_suite_mod", None)
    assert events == ["before", ("after", ["before"])]


def test_watcher_callbacks_survive_a_find_spec_without_import(tmp_path, monkeypatch):
    import importlib.util

    (tmp_path / "watched_found_mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    events = []
    try:
        _boot.watcher.watch_before("watched_found_mod", lambda: events.append("before"))
        _boot.watcher.watch("watched_found_mod", lambda m: events.append("after"))
        if _boot.watcher not in sys.meta_path:
            monkeypatch.setattr(sys, "meta_path", [_boot.watcher] + sys.meta_path)
        assert importlib.util.find_spec("watched_found_mod") is not None  # found, not executed
        assert events == []
        import watched_found_mod  # noqa: F401
    finally:
        sys.modules.pop("watched_found_mod", None)
    assert events == ["before", "after"]
