"""The hook spec is documented, and the adapter guide's package actually works."""
import inspect
import re
import textwrap

from slim_plugins.hooks import spec

ROOT = __file__.rsplit("/tests/", 1)[0]
DOC = ROOT + "/docs/adapters.md"

TOYTRAIN = '''
import paddle


class Trainer:
    def __init__(self, model, eval_batches=2):
        self.model, self.eval_batches = model, eval_batches

    def accuracy(self, max_batches=None):
        batches = self.eval_batches if max_batches is None else min(max_batches, self.eval_batches)
        with paddle.no_grad():
            for _ in range(batches):
                self.model(paddle.zeros([2, 3, 8, 8]))
        return 0.5

    def fit(self):
        return self.model(paddle.zeros([2, 3, 8, 8]))
'''


def test_every_hook_has_type_annotations():
    hooks = [(n, f) for n, f in vars(spec).items() if n.startswith("slim_") and callable(f)]
    for name, func in hooks:
        signature = inspect.signature(func)
        assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"
        for param in signature.parameters.values():
            assert param.annotation is not inspect.Parameter.empty, f"{name}: {param.name} has no annotation"


def test_every_hook_is_documented():
    hooks = [(n, f) for n, f in vars(spec).items() if n.startswith("slim_") and callable(f)]
    assert len(hooks) >= 15
    for name, func in hooks:
        doc = inspect.getdoc(func) or ""
        assert doc.strip(), f"{name} has no docstring"
        for param in inspect.signature(func).parameters:
            if param != "run":
                assert f":param {param}:" in doc, f"{name}: :param {param}: missing"


def lifecycle_hooks():
    """The hooks every implementation of which is called (not the query or set-up ones)."""
    return sorted(n for n, f in vars(spec).items() if n.startswith("slim_") and callable(f)
                  and not getattr(f, "slim_plugins_spec", {}).get("firstresult")
                  and not getattr(f, "slim_plugins_spec", {}).get("historic"))


def test_lifecycle_hooks_are_documented_recorded_and_in_the_adapter_guide():
    from slim_plugins.testing import HookRecorder

    hooks = lifecycle_hooks()
    assert {"slim_before_load_weights", "slim_after_load_weights", "slim_before_train", "slim_on_checkpoint_save",
            "slim_before_export", "slim_after_train", "slim_on_run_end"} == set(hooks)
    guide = open(DOC).read()
    for name in hooks:
        assert callable(getattr(HookRecorder, name, None)), f"HookRecorder does not record {name}"
        assert f"`{name}(" in guide, f"docs/adapters.md does not say when to fire {name}"
        doc = inspect.getdoc(getattr(spec, name))
        assert ":param run:" in doc, f"{name}: :param run: missing"
        assert "fires" in doc.lower(), f"{name}: when it fires is not said"


def test_adapter_guide_package_passes_its_own_test(tmp_path, python):
    text = open(DOC).read()
    blocks = re.findall(r"`([\w.]+\.py)`[^`]*?```python\n(.*?)```", text, re.S)
    files = dict(blocks)
    assert {"slim_toytrain.py", "test_slim_toytrain.py"} <= set(files)
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "toytrain.py").write_text(textwrap.dedent(TOYTRAIN))
    proc = python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_slim_toytrain.py"], cwd=str(tmp_path))
    assert "1 passed" in proc.stdout


def test_readme_option_table_is_the_declared_options():
    """The README's prune option table is the one ``PruneOptions`` generates (names, defaults,
    help): regenerate it with ``python scripts/options_table.py`` after changing an option."""
    from slim_plugins.config import declared_options, options_markdown
    from slim_plugins.plugins.prune.options import PruneOptions

    readme = open(ROOT + "/README.md", encoding="utf-8").read()
    start = readme.index("| key | default | meaning |")
    table = readme[start:readme.index("\n\n", start)]
    expected = options_markdown(PruneOptions)
    assert table == expected, "README.md's prune option table is stale; paste this:\n" + expected
    names = [row.split("|")[1].strip(" `") for row in table.splitlines()[2:]]
    assert names == [o.name for o in declared_options(PruneOptions)]
