"""The builtin adapter: any script that trains with Paddle's high-level API (``paddle.Model``).

Patches ``paddle.Model.fit`` (fires ``slim_before_train`` before the first epoch, and
``slim_after_train``), ``Model.save`` (``slim_on_checkpoint_save``) and ``Model.load``
(``slim_before_load_weights``). The metric is the first of ``Model.prepare(metrics=...)``,
evaluated with ``Model.evaluate`` on the ``eval_data`` given to ``fit``.
"""
import contextlib
import functools
import inspect

from slim_plugins.adapters import Adapter
from slim_plugins.hooks import hookimpl
from slim_plugins.run import Metric


def _quiet_if_active(run):
    """With a plugin on, its lines are not drowned in Paddle's BatchNorm warning."""
    if not run.session.enabled:
        return contextlib.nullcontext()
    from slim_plugins import compat

    return compat.quiet_batch_norm_warning()


class HapiAdapter(Adapter):
    name = "builtin"
    modules = ("paddle.hapi.model",)
    description = "Paddle high-level API: paddle.Model.fit / evaluate / save / load"
    distributions = ("paddlepaddle", "paddlepaddle-gpu")
    supported = ("2.6.", "3.")

    def patched(self):
        from paddle.hapi.model import Model

        return bool(getattr(Model.fit, "_slim_patched", False))

    def matches(self, imported_modules):
        return "paddle" in imported_modules

    # ------------------------------------------------------------------ patching
    def install(self, session):
        from paddle.hapi.model import Model

        from slim_plugins.session import get_session

        if getattr(Model.fit, "_slim_patched", False):
            return
        adapter = self
        fit, save, load = Model.fit, Model.save, Model.load
        fit_signature = inspect.signature(fit)

        @functools.wraps(fit)
        def patched_fit(model_self, *args, **kwargs):
            bound = fit_signature.bind(model_self, *args, **kwargs)
            bound.apply_defaults()
            run = adapter.run_for(get_session(), model_self)
            run.state["fit_args"] = dict(bound.arguments)
            with _quiet_if_active(run):
                if not run.state.get("before_train_fired"):
                    run.state["before_train_fired"] = True
                    shapes = _shapes(model_self.network)
                    adapter.fire(run, "slim_before_train")
                    if shapes != _shapes(model_self.network):
                        _rewrap_data_parallel(model_self)
                result = fit(model_self, *args, **kwargs)
                adapter.fire(run, "slim_after_train")
            return result

        @functools.wraps(save)
        def patched_save(model_self, path, training=True):
            run = adapter.run_for(get_session(), model_self)
            if not training:
                adapter.fire(run, "slim_before_export", path=path)
            result = save(model_self, path, training)
            if training:
                adapter.fire(run, "slim_on_checkpoint_save", path=path)
            return result

        @functools.wraps(load)
        def patched_load(model_self, path, *args, **kwargs):
            run = adapter.run_for(get_session(), model_self)
            adapter.fire(run, "slim_before_load_weights", path=path)
            return load(model_self, path, *args, **kwargs)

        for patched in (patched_fit, patched_save, patched_load):
            patched._slim_patched = True
        Model.fit, Model.save, Model.load = patched_fit, patched_save, patched_load
        _defer_data_parallel()

    # ------------------------------------------------------------------ what it exposes
    def model(self, run):
        return run.handle.network

    def optimizer(self, run):
        return getattr(run.handle, "_optimizer", None)

    def train_loader(self, run):
        return run.state.get("fit_args", {}).get("train_data")

    def eval_loader(self, run):
        return run.state.get("fit_args", {}).get("eval_data")

    def metric(self, run):
        hapi = run.handle
        args = run.state.get("fit_args", {})
        eval_data = args.get("eval_data")
        metrics = getattr(hapi, "_metrics", None) or []
        if eval_data is None or not metrics:
            return None
        name = metrics[0].name()
        name = name[0] if isinstance(name, (list, tuple)) else name
        batch_size = args.get("batch_size", 1)
        num_workers = args.get("num_workers", 0)

        def evaluate(max_batches=None):
            # A local evaluation on this rank's process: hapi would all_gather the outputs of
            # every rank, but ranks analyse different groups (and a worker is a forked child).
            import paddle

            loader = eval_data
            if not isinstance(loader, paddle.io.DataLoader):
                loader = paddle.io.DataLoader(eval_data, batch_size=batch_size, shuffle=False,
                                              num_workers=num_workers)
            engine = hapi._adapter
            nranks = getattr(engine, "_nranks", 1)
            engine._nranks = 1
            try:
                result = hapi.evaluate(loader, verbose=0, num_iters=max_batches)
            finally:
                engine._nranks = nranks
            value = result[name]
            return float(value[0] if isinstance(value, (list, tuple)) else value)

        return Metric(name, evaluate)

    def input_spec(self, run):
        return getattr(run.handle, "_inputs", None) or None

    def save_dir(self, run):
        return run.state.get("fit_args", {}).get("save_dir") or None


def _shapes(network):
    return [tuple(p.shape) for p in network.parameters()]


class _LazyDataParallel:
    """Stands in for the DataParallel wrapper hapi builds in ``Model()``: the real one (which
    registers gradient hooks sized for the current parameters) is built at first use, after
    ``slim_before_train`` has pruned. Every rank builds it at its first train step, in step."""

    def __init__(self, factory, args, kwargs):
        self._factory, self._args, self._kwargs, self._real = factory, args, kwargs, None

    def _get(self):
        if self._real is None:
            self._real = self._factory(*self._args, **self._kwargs)
        return self._real

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._get(), name)


def _defer_data_parallel():
    import paddle
    from paddle.hapi.model import DynamicGraphAdapter

    init = DynamicGraphAdapter.__init__
    if getattr(init, "_slim_patched", False):
        return

    @functools.wraps(init)
    def patched_init(engine, model):
        real = paddle.DataParallel
        paddle.DataParallel = lambda *a, **k: _LazyDataParallel(real, a, k)
        try:
            init(engine, model)
        finally:
            paddle.DataParallel = real

    patched_init._slim_patched = True
    DynamicGraphAdapter.__init__ = patched_init


def _rewrap_data_parallel(hapi_model):
    engine = hapi_model._adapter
    ddp = getattr(engine, "ddp_model", None)
    if isinstance(ddp, _LazyDataParallel) and ddp._real is not None:
        raise RuntimeError("the DataParallel wrapper was built before pruning")


adapter = HapiAdapter()


@hookimpl
def slim_register_adapters(register):
    register(adapter)
