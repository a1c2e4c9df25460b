"""Adapters turn a suite's objects into the hook spec's terms.

Subclass :class:`Adapter`, override what your suite can give, patch the suite's entry points in
:meth:`Adapter.install`, and register an instance from a ``slim_register_adapters`` hook.
"""
from slim_plugins.hooks import hookimpl


class Adapter:
    """Base of every adapter: answers the query hooks for the runs it owns.

    :cvar name: unique adapter name; a run with ``run.adapter == name`` belongs to it.
    :cvar modules: suite modules; when one is imported, :meth:`install` runs.
    :cvar description: one line for ``slim-plugins list``.
    """

    name = "base"
    modules = ()
    description = ""

    # ---- override these -----------------------------------------------------------------
    def install(self, session):
        """Patch the suite's entry points so they fire the lifecycle hooks."""

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
