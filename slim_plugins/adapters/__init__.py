"""Adapters turn a suite's objects into the hook spec's terms.

Subclass :class:`Adapter`, override what your suite can give, patch the suite's entry points in
:meth:`Adapter.install` (or in its two stages, :meth:`Adapter.install_loading` and
:meth:`Adapter.install_training`), and register an instance from a ``slim_register_adapters`` hook.
"""
import contextlib
import importlib
import inspect
import sys

from slim_plugins.hooks import hookimpl


def fixed_order_loader(loader):
    """``loader`` (a ``paddle.io.DataLoader``) or, when it shuffles or is distributed, a copy over
    its whole dataset in a fixed order: every evaluation, on every rank, sees the same batches."""
    import paddle

    sampler = getattr(loader, "batch_sampler", None)
    if sampler is None or not isinstance(loader, paddle.io.DataLoader):  # iterable data: its own order
        return loader
    shuffled = (getattr(sampler, "shuffle", False) or isinstance(sampler, paddle.io.DistributedBatchSampler)
                or isinstance(getattr(sampler, "sampler", None), paddle.io.RandomSampler))
    if not shuffled:
        return loader
    return paddle.io.DataLoader(loader.dataset, batch_size=sampler.batch_size, shuffle=False,
                                drop_last=getattr(sampler, "drop_last", False),
                                collate_fn=getattr(loader, "collate_fn", None),
                                num_workers=getattr(loader, "num_workers", 0),
                                return_list=getattr(loader, "return_list", True))


class SkippedTrainLoader:
    """What an adapter gives its suite in place of the train loader when a plugin will end the run
    before training (:meth:`slim_plugins.session.Session.stops_before_train`): no dataset parsed,
    no worker process, no prefetch. It has one batch for the suite's schedule arithmetic
    (steps per epoch) and refuses to be iterated, with the reason, should training start anyway."""

    def __init__(self, reason, adapter, what="train loader"):
        self.reason, self.adapter, self.what = reason, adapter, what
        sys.stderr.write(f"[slim-plugins {adapter}] {reason} ends the run before training: "
                         f"the {what} is not built\n")

    def __len__(self):
        return 1

    def __iter__(self):
        from slim_plugins.errors import AdapterError

        raise AdapterError(f"the {self.what} was not built ({self.reason} ends the run before training), "
                           "but training started", plugin=self.adapter,
                           hint="report this: the plugin that answered slim_stops_before_train did not stop the run")

    __next__ = __iter__


def resolve(target):
    """``"module:Attr.path"`` -> the object, or None when the module or an attribute is missing."""
    module_name, _, path = target.partition(":")
    try:
        obj = sys.modules.get(module_name) or importlib.import_module(module_name)
    except ImportError:
        return None
    for part in path.split(".") if path else ():
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def missing_parameters(func, names):
    """The names in ``names`` that ``func``'s signature lacks (a wrapper binds them by name)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return []
    return [n for n in names if n not in params]


def parameter_shapes(model):
    """Every parameter's shape, in order (None without a model): what pruning changes."""
    return [tuple(p.shape) for p in model.parameters()] if model is not None else None


class Adapter:
    """Base of every adapter: answers the query hooks for the runs it owns.

    :cvar name: unique adapter name; a run with ``run.adapter == name`` belongs to it.
    :cvar modules: suite modules; when one is imported, :meth:`install` runs.
    :cvar distributions: pip names of the suite; ``slim-plugins list`` shows the version installed.
    :cvar supported: version prefixes the adapter is tested with (``("2.6.",)``); :meth:`verify`
        refuses another installed version.
    :cvar targets: ``{"module:Attr.path": (parameter names)}``: what the adapter replaces or
        calls, and the parameters its wrappers bind by name; :meth:`verify` checks every one
        before anything is patched.
    :cvar state_class: the dataclass of the adapter's own record of a run (``run.adapter_state``).
    :cvar weights_hint: how a user of this suite loads trained weights before training, for the
        errors that refuse an untrained model or an option the adapter cannot honour.
    """

    name = "base"
    modules = ()
    distributions = ()
    supported = ()
    targets = {}
    state_class = None
    weights_hint = ""

    # ---- override these -----------------------------------------------------------------
    def install(self, session):
        """Runs when the suite's module is imported: :meth:`verify`, then the patches every
        process needs (:meth:`install_loading`: pruned shapes rebuilt on load, activation read
        from the suite's config); the training patches follow once a plugin is enabled
        (:meth:`activate`). An adapter may override this and patch everything at once."""
        self.verify()
        self.install_loading(session)
        self._loading = True
        if session.enabled or getattr(session, "adapters_active", False):
            self.activate(session)

    def install_loading(self, session):
        """Patch what every process of the suite needs, plugin or not: weight loads (fire
        ``slim_before_load_weights`` / ``slim_after_load_weights``) and the config readers that
        may enable a plugin."""

    def install_training(self, session):
        """Patch the rest (training, checkpoints, export): runs once a plugin is enabled, or a
        load rebuilt a model's shapes (its checkpoints must carry the plan from then on)."""

    def activate(self, session):
        """Install the training patches, once; an unsupported or changed suite raises
        :class:`~slim_plugins.errors.AdapterError` here too (it was only reported at import)."""
        if getattr(self, "_active", False):
            return
        self.verify()
        if not getattr(self, "_loading", False):
            self.install_loading(session)
            self._loading = True
        self.install_training(session)
        self._active = True

    def suite_version(self):
        """``(distribution, version)`` of the installed suite, or None (e.g. a source checkout)."""
        from importlib import metadata

        for dist in self.distributions:
            try:
                return dist, metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None

    def verify(self):
        """Refuse, with one :class:`~slim_plugins.errors.AdapterError` naming the suite, its version
        and the missing piece, a suite version not in :attr:`supported` or one that lacks a
        :attr:`targets` entry: nothing is patched then."""
        from slim_plugins import environment
        from slim_plugins.errors import AdapterError

        found = self.suite_version()
        suite = (f"{found[0]} {found[1]}" if found else
                 f"{self.distributions[0] if self.distributions else self.name} (version unknown)")
        tested = ", ".join(p + "x" for p in self.supported)
        hint = (f"install a version the {self.name} adapter supports ({tested}), "
                "or run without --plugin" if tested else "run without --plugin")
        if found and environment.supported(self, found[1]) is False:
            raise AdapterError(f"{suite} is not a version the {self.name} adapter supports", plugin=self.name,
                               hint=hint)
        for target, params in self.targets.items():
            label = target.replace(":", ".")
            obj = resolve(target)
            if obj is None:
                raise AdapterError(f"{suite} has no {label}, which the {self.name} adapter patches", plugin=self.name,
                                   hint=hint)
            lacking = missing_parameters(obj, params)
            if lacking:
                raise AdapterError(f"{suite}: {label} has no parameter {lacking[0]!r}, which the {self.name} "
                                   "adapter binds by name", plugin=self.name, hint=hint)

    def patch_state(self):
        """``"all"``, ``"loading"`` (no plugin enabled), ``"none"``, or None (cannot tell) in this process."""
        patched = self.patched()
        if patched is None:
            return None
        if patched:
            return "all"
        return "loading" if getattr(self, "_loading", False) else "none"

    def state(self, run):
        """The adapter's own typed record of ``run`` (an instance of :attr:`state_class`)."""
        if run.adapter_state is None and self.state_class is not None:
            run.adapter_state = self.state_class()
        return run.adapter_state

    def import_suite(self):
        """Import the suite as its train command does (``slim-plugins list`` checks the patches)."""
        import importlib

        for module_name in self.modules:
            importlib.import_module(module_name)

    def patched(self):
        """Do the suite's entry points carry this adapter's patches in this process? None: cannot
        tell. ``slim-plugins list`` asks it in a fresh interpreter after :meth:`import_suite`."""
        return None

    def matches(self, imported_modules):
        """Does a script importing ``imported_modules`` (top-level names) run on this suite?"""
        return any(m.split(".")[0] in imported_modules for m in self.modules)

    def model(self, run):
        return None

    def optimizer(self, run):
        return None

    def train_loader(self, run):
        return None

    def eval_loader(self, run):
        return None

    def metric(self, run):
        return None

    def input_spec(self, run):
        return None

    def forward_inputs(self, run, batch_size):
        return None

    def trace_inputs(self, run):
        return None

    def save_dir(self, run):
        return None

    def trace_mode(self, run):
        return None

    def trace_context(self, run):
        return None

    def world(self, run):
        return None

    def flops_rows(self, run):
        return None

    def train_forward(self, run):
        return None

    # ---- hook implementations: answer only for own runs --------------------------------
    def _owns(self, run):
        return run.adapter == self.name

    @hookimpl
    def slim_model(self, run):
        return self.model(run) if self._owns(run) else None

    @hookimpl
    def slim_optimizer(self, run):
        return self.optimizer(run) if self._owns(run) else None

    @hookimpl
    def slim_train_loader(self, run):
        return self.train_loader(run) if self._owns(run) else None

    @hookimpl
    def slim_eval_loader(self, run):
        return self.eval_loader(run) if self._owns(run) else None

    @hookimpl
    def slim_metric(self, run):
        return self.metric(run) if self._owns(run) else None

    @hookimpl
    def slim_input_spec(self, run):
        return self.input_spec(run) if self._owns(run) else None

    @hookimpl
    def slim_forward_inputs(self, run, batch_size):
        return self.forward_inputs(run, batch_size) if self._owns(run) else None

    @hookimpl
    def slim_trace_inputs(self, run):
        return self.trace_inputs(run) if self._owns(run) else None

    @hookimpl
    def slim_trace_mode(self, run):
        return self.trace_mode(run) if self._owns(run) else None

    @hookimpl
    def slim_trace_context(self, run):
        return self.trace_context(run) if self._owns(run) else None

    @hookimpl
    def slim_flops_rows(self, run):
        return self.flops_rows(run) if self._owns(run) else None

    @hookimpl
    def slim_save_dir(self, run):
        return self.save_dir(run) if self._owns(run) else None

    @hookimpl
    def slim_world(self, run):
        return self.world(run) if self._owns(run) else None

    @hookimpl
    def slim_train_forward(self, run):
        return self.train_forward(run) if self._owns(run) else None

    # ---- helpers for subclasses ----------------------------------------------------------
    def new_run(self, session, handle=None, mode="train"):
        return session.new_run(self.name, handle=handle, mode=mode)

    def run_for(self, session, handle, mode="train"):
        """The run of a suite object (``paddle.Model``, ppdet ``Trainer`` ...), created on first
        use and kept on the object, so every hook of that object sees the same run state."""
        run = getattr(handle, "_slim_run", None)
        if run is None:
            run = self.new_run(session, handle=handle, mode=mode)
            object.__setattr__(handle, "_slim_run", run)
        return run

    @staticmethod
    def fire(run, event, **kwargs):
        """Fire a lifecycle hook for ``run``: ``fire(run, "slim_before_train")``."""
        return getattr(run.session.pm.hook, event)(run=run, **kwargs)

    def announce_load(self, run, path):
        """Fire ``slim_before_load_weights``; True when a plugin changed the model's shapes (the
        prune plugin replayed a plan). Such a model's checkpoints and exports must carry the plan
        too: the training patches are installed then, with no plugin enabled."""
        model = run.model
        before = parameter_shapes(model)
        self.fire(run, "slim_before_load_weights", path=path)
        changed = before != parameter_shapes(model)
        if changed:
            self.activate(run.session)
        return changed

    def fire_before_train(self, run):
        """``slim_before_train``, once per run; True if it fired now."""
        if run.before_train_fired:
            return False
        run.before_train_fired = True
        self.fire(run, "slim_before_train")
        return True

    @contextlib.contextmanager
    def training(self, run):
        """Around the suite's train call (and the pruning before it): ``slim_on_run_end`` with
        None after a normal end, or with the exception (``KeyboardInterrupt`` and ``SystemExit``
        included) that ends it, before it propagates."""
        try:
            yield
        except BaseException as exc:
            self.end_run(run, exc)
            raise
        self.end_run(run, None)

    def end_run(self, run, error):
        """Fire ``slim_on_run_end``; with an error in flight, a failing implementation is reported
        in one line and the run's own error goes on."""
        try:
            self.fire(run, "slim_on_run_end", error=error)
        except Exception as exc:
            if error is None:
                raise
            from slim_plugins.errors import exception_line

            sys.stderr.write(f"slim-plugins: slim_on_run_end failed ({exception_line(exc)})\n")

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"
