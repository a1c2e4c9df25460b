"""Test helpers for adapter and plugin authors.

In a test module or ``conftest.py``::

    pytest_plugins = ["slim_plugins.testing"]

    def test_my_adapter(slim_session, hook_recorder):
        slim_session.register_adapter(MyAdapter())
        run = slim_session.new_run("mine", handle=my_trainer)
        check_adapter(run)                     # model, metric, inputs behave as the spec says
        ... run the suite ...
        assert hook_recorder.names() == ["slim_before_train", "slim_on_checkpoint_save"]
"""
import pytest

from slim_plugins.hooks import hookimpl


class HookRecorder:
    """A plugin that records every lifecycle hook call: ``(hook name, run, kwargs)``."""

    def __init__(self):
        self.calls = []

    def names(self):
        return [name for name, _run, _kw in self.calls]

    def _record(self, name, run, **kwargs):
        self.calls.append((name, run, kwargs))

    @hookimpl
    def slim_before_load_weights(self, run, path):
        self._record("slim_before_load_weights", run, path=path)

    @hookimpl
    def slim_before_train(self, run):
        self._record("slim_before_train", run)

    @hookimpl
    def slim_on_checkpoint_save(self, run, path):
        self._record("slim_on_checkpoint_save", run, path=path)

    @hookimpl
    def slim_before_export(self, run, path):
        self._record("slim_before_export", run, path=path)

    @hookimpl
    def slim_after_load_weights(self, run, path, exact):
        self._record("slim_after_load_weights", run, path=path, exact=exact)

    @hookimpl
    def slim_after_train(self, run):
        self._record("slim_after_train", run)

    @hookimpl
    def slim_on_run_end(self, run, error):
        self._record("slim_on_run_end", run, error=error)


def check_adapter(run, max_batches=1):
    """Assert that ``run``'s adapter answers the query hooks as the spec promises."""
    import paddle

    model = run.model
    assert isinstance(model, paddle.nn.Layer), f"slim_model gave {type(model).__name__}, not a paddle.nn.Layer"
    inputs = run.forward_inputs(1)
    assert inputs is not None, "neither slim_input_spec nor slim_forward_inputs gave inputs"
    model.eval()
    with paddle.no_grad():
        model(*inputs)
    metric = run.metric
    if metric is not None:
        value = metric(max_batches=max_batches)
        assert isinstance(value, float), f"metric {metric.name} returned {type(value).__name__}"
    rank, world_size = run.world
    assert 0 <= rank < world_size
    return True


@pytest.fixture
def slim_session(monkeypatch):
    """A fresh session (no entry points, nothing enabled), installed as the process's session."""
    from slim_plugins import _boot
    from slim_plugins.session import Session, reset_session

    for var in (_boot.ENV_PLUGINS, _boot.ENV_OPTIONS, _boot.ENV_CONFIG):
        monkeypatch.delenv(var, raising=False)
    session = Session(autoload=False)
    reset_session(session)
    yield session
    reset_session(None)


@pytest.fixture
def hook_recorder(slim_session):
    """A :class:`HookRecorder` registered in ``slim_session``, with the adapters' training
    patches installed (as when a plugin is enabled: the recorder is one)."""
    recorder = HookRecorder()
    slim_session.pm.register(recorder, name="hook-recorder")
    slim_session.activate_adapters()
    return recorder
