"""The builtin adapter: any script that trains with Paddle's high-level API (``paddle.Model``).

Patches ``Model.load`` in every process (``slim_before_load_weights``, ``slim_after_load_weights``)
and, once a plugin is enabled, ``paddle.Model.fit`` (loads a plugin's ``slim_initial_weights``,
fires ``slim_before_train`` before the first epoch, or at the end of the epoch a plugin's
``slim_epochs_before_train`` names, then ``slim_after_train`` and ``slim_on_run_end``),
``Model.save`` (``slim_on_checkpoint_save``) and hapi's DataParallel wrapping (built at the first
step, after pruning). The metric is the first of ``Model.prepare(metrics=...)``, evaluated with
``Model.evaluate`` on the ``eval_data`` given to ``fit``.
"""
import contextlib
import functools
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Dict

from slim_plugins.adapters import Adapter, fixed_order_loader, parameter_shapes
from slim_plugins.errors import user_errors
from slim_plugins.hooks import hookimpl
from slim_plugins.run import EvalBatches, Metric


def _quiet_if_active(run):
    """With a plugin on, its lines are not drowned in Paddle's BatchNorm warning."""
    if not run.session.enabled:
        return contextlib.nullcontext()
    from slim_plugins import compat

    return compat.quiet_batch_norm_warning()


@dataclass
class HapiState:
    """The builtin adapter's record of a ``paddle.Model``'s run.

    :ivar fit_args: the arguments of the latest ``fit`` call, by name (defaults applied).
    """

    fit_args: Dict[str, Any] = field(default_factory=dict)


class HapiAdapter(Adapter):
    name = "builtin"
    modules = ("paddle.hapi.model",)
    distributions = ("paddlepaddle", "paddlepaddle-gpu")
    supported = ("2.6.", "3.")
    targets = {"paddle.hapi.model:Model.fit": ("train_data", "eval_data", "batch_size", "save_dir"),
               "paddle.hapi.model:Model.save": ("path", "training"), "paddle.hapi.model:Model.load": ("path",),
               "paddle.hapi.model:Model.evaluate": (), "paddle.hapi.model:DynamicGraphAdapter.__init__": ()}
    state_class = HapiState
    weights_hint = ("analyse trained weights: --prune.weights PATH (a Model.save prefix), or --prune.after_epochs N "
                    "(train N epochs, then prune and train on), or paddle.Model.load before fit")

    def patched(self):
        from paddle.hapi.model import Model

        return bool(getattr(Model.fit, "_slim_patched", False))

    def matches(self, imported_modules):
        return "paddle" in imported_modules

    # ------------------------------------------------------------------ patching
    def install_loading(self, session):
        """``Model.load``: the plan rebuilds pruned shapes first; a refusal of the shapes becomes
        the one-line error of ``slim_after_load_weights``."""
        from paddle.hapi.model import Model

        load = Model.load
        if getattr(load, "_slim_patched", False):
            return
        adapter = self

        @functools.wraps(load)
        def patched_load(model_self, path, *args, **kwargs):
            from slim_plugins.session import get_session

            run = adapter.run_for(get_session(), model_self)
            adapter.announce_load(run, path)
            try:
                result = load(model_self, path, *args, **kwargs)
            except ValueError as exc:
                if "receives a shape" not in str(exc):
                    raise
                adapter.fire(run, "slim_after_load_weights", path=path, exact=True)  # raises the plugin's error
                raise
            adapter.fire(run, "slim_after_load_weights", path=path, exact=True)
            return result

        patched_load._slim_patched = True
        Model.load = patched_load

    def install_training(self, session):
        """``Model.fit`` (``slim_before_train`` before the first epoch, ``slim_after_train``,
        ``slim_on_run_end``), ``Model.save`` and the deferred DataParallel wrapper."""
        from paddle.hapi.model import Model

        if getattr(Model.fit, "_slim_patched", False):
            return
        adapter = self
        fit, save = Model.fit, Model.save
        fit_signature = inspect.signature(fit)

        @functools.wraps(fit)
        def patched_fit(model_self, *args, **kwargs):
            from slim_plugins.session import get_session

            bound = fit_signature.bind(model_self, *args, **kwargs)
            bound.apply_defaults()
            run = adapter.run_for(get_session(), model_self)
            adapter.state(run).fit_args = dict(bound.arguments)
            with _quiet_if_active(run), adapter.training(run):
                if run.before_train_fired:
                    result = fit(model_self, *args, **kwargs)
                else:
                    with user_errors():
                        _load_initial_weights(run, model_self)
                        after = _epochs_before_train(run, bound.arguments)
                    if after:
                        callbacks = bound.arguments.get("callbacks") or []
                        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
                        bound.arguments["callbacks"] = callbacks + [_at_epoch_end(after, functools.partial(
                            _before_train, adapter, run, model_self))]
                        result = fit(*bound.args, **bound.kwargs)
                        if not run.epochs_done:  # e.g. early stopping before the boundary
                            sys.stderr.write(f"[slim-plugins builtin] fit stopped before epoch {after} ended: "
                                             "slim_before_train never fired, the model is not pruned\n")
                    else:
                        _before_train(adapter, run, model_self)
                        result = fit(model_self, *args, **kwargs)
                adapter.fire(run, "slim_after_train")
            return result

        @functools.wraps(save)
        def patched_save(model_self, path, training=True):
            from slim_plugins.session import get_session

            run = adapter.run_for(get_session(), model_self)
            # the plan goes first: a kill between the two files leaves no new weights with an old plan
            adapter.fire(run, "slim_on_checkpoint_save" if training else "slim_before_export", path=path)
            return save(model_self, path, training)

        for patched in (patched_fit, patched_save):
            patched._slim_patched = True
        Model.fit, Model.save = patched_fit, patched_save
        _defer_data_parallel()

    # ------------------------------------------------------------------ what it exposes
    def model(self, run):
        return run.handle.network

    def optimizer(self, run):
        return getattr(run.handle, "_optimizer", None)

    def train_loader(self, run):
        return self.state(run).fit_args.get("train_data")

    def eval_loader(self, run):
        args = self.state(run).fit_args
        eval_data = args.get("eval_data")
        from paddle.io import DataLoader

        if eval_data is None or isinstance(eval_data, DataLoader):
            return eval_data
        return DataLoader(eval_data, batch_size=args.get("batch_size", 1), shuffle=False)  # as fit batches it

    def metric(self, run):
        hapi = run.handle
        args = self.state(run).fit_args
        eval_data = args.get("eval_data")
        metrics = getattr(hapi, "_metrics", None) or []
        if eval_data is None or not metrics:
            return None
        name = metrics[0].name()
        name = name[0] if isinstance(name, (list, tuple)) else name
        from paddle.io import DataLoader

        loader = eval_data
        if not isinstance(loader, DataLoader):
            loader = DataLoader(eval_data, batch_size=args.get("batch_size", 1), shuffle=False,
                                num_workers=args.get("num_workers", 0))
        loader = fixed_order_loader(loader)

        def evaluate(max_batches=None):
            # A local evaluation on this rank's process: hapi would all_gather the outputs of
            # every rank, but ranks analyse different groups (and a worker is a forked child).
            batches = EvalBatches(loader, max_batches, "the eval_data given to fit")
            engine = hapi._adapter
            nranks = getattr(engine, "_nranks", 1)
            engine._nranks = 1
            try:
                result = hapi.evaluate(batches, verbose=0)
            except Exception:
                batches.check()  # hapi fails on no batch with a KeyError: say what happened
                raise
            finally:
                engine._nranks = nranks
            batches.check()
            value = result[name]
            return float(value[0] if isinstance(value, (list, tuple)) else value)

        return Metric(name, evaluate, chance=_chance(run, metrics[0]), weights_hint=self.weights_hint)

    def input_spec(self, run):
        return getattr(run.handle, "_inputs", None) or None

    def save_dir(self, run):
        return self.state(run).fit_args.get("save_dir") or None


def _chance(run, metric):
    """``k / classes`` for a top-k ``paddle.metric.Accuracy`` (classes: the width of the network's
    output on a dummy input), 0 for other metrics, None when the width cannot be found."""
    import paddle

    if not isinstance(metric, paddle.metric.Accuracy):
        return 0.0
    network = run.handle.network
    was_training = network.training
    try:
        inputs = run.forward_inputs(1)
        network.eval()
        with paddle.no_grad():
            out = network(*inputs)
        out = out[0] if isinstance(out, (list, tuple)) else out
        classes = int(out.shape[-1])
    except Exception:
        return None
    finally:
        if was_training:
            network.train()
    return min(1.0, metric.topk[0] / classes) if classes > 1 else None


def _load_initial_weights(run, hapi_model):
    """A plugin's trained weights (``--prune.weights``), loaded as the script's own
    ``Model.load`` would (plan replay included), with a fresh optimizer state."""
    path = run.initial_weights
    if path is None:
        return
    prefix = path[: -len(".pdparams")] if path.endswith(".pdparams") else path
    hapi_model.load(prefix, reset_optimizer=True)
    run.weights_loaded = path


def _epochs_before_train(run, fit_args):
    """The epochs a plugin wants trained first, checked against this ``fit`` before it trains."""
    from slim_plugins.errors import OptionError

    after = run.epochs_before_train
    if not after:
        return None
    epochs = fit_args.get("epochs")
    if epochs is None or after >= epochs:
        raise OptionError(f"after_epochs={after} leaves no epoch to train the pruned model: fit runs {epochs}",
                          plugin="prune", hint=f"give an after_epochs below {epochs}, or more epochs to fit")
    if run.world_size > 1:
        raise OptionError(
            f"after_epochs={after} under data-parallel training ({run.world_size} ranks): hapi's DataParallel "
            "wrapper keeps gradient hooks sized for the unpruned parameters", plugin="prune",
            hint="train first, then prune from the trained weights with --prune.weights PATH")
    return after


def _before_train(adapter, run, hapi_model, epochs_done=0):
    """``slim_before_train`` once (after ``epochs_done`` epochs); hapi's DataParallel wrapper
    rebuilt when it pruned."""
    run.epochs_done = epochs_done
    shapes = parameter_shapes(hapi_model.network)
    with user_errors():
        fired = adapter.fire_before_train(run)
    if fired and shapes != parameter_shapes(hapi_model.network):
        _rewrap_data_parallel(hapi_model)


def _at_epoch_end(epochs, before_train):
    """A hapi callback firing ``slim_before_train`` after ``epochs`` epochs, inside the one ``fit``:
    its callbacks, LR scheduler and checkpoint numbering go on; pruning prunes the optimizer's
    accumulators with the weights and drops their gradients, so the next step is consistent."""
    import paddle

    class BeforeTrainAtEpoch(paddle.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                before_train(epochs_done=epochs)

    return BeforeTrainAtEpoch()


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
