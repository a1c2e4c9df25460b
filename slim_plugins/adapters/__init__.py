"""Adapters turn a suite's objects into the hook spec's terms.

Subclass :class:`Adapter`, override what your suite can give, patch the suite's entry points in
:meth:`Adapter.install`, and register an instance from a ``slim_register_adapters`` hook.
"""
import contextlib
import sys

from slim_plugins.hooks import hookimpl


@contextlib.contextmanager
def user_errors():
    """A slim-plugins user error inside a suite's entry point: its message and exit 2, no
    traceback through the suite and pluggy."""
    from slim_plugins.errors import SlimPluginsError

    try:
        yield
    except SlimPluginsError as exc:
        sys.stderr.write(f"slim-plugins: error: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None


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


class Adapter:
    """Base of every adapter: answers the query hooks for the runs it owns.

    :cvar name: unique adapter name; a run with ``run.adapter == name`` belongs to it.
    :cvar modules: suite modules; when one is imported, :meth:`install` runs.
    :cvar description: one line for ``slim-plugins list``.
    :cvar distributions: pip names of the suite; ``slim-plugins list`` shows the version installed.
    :cvar supported: version prefixes the adapter is tested with (``("2.6.",)``).
    :cvar weights_hint: how a user of this suite loads trained weights before training, for the
        errors that refuse an untrained model or an option the adapter cannot honour.
    """

    name = "base"
    modules = ()
    description = ""
    distributions = ()
    supported = ()
    weights_hint = ""

    # ---- override these -----------------------------------------------------------------
    def install(self, session):
        """Patch the suite's entry points so they fire the lifecycle hooks."""

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

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"
