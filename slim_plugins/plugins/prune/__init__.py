"""The prune plugin: see what can be pruned, analyse sensitivities, choose ratios, prune before
training, and keep the pruned shapes through checkpoints, eval, export and resume.

Switched on with ``--plugin prune``, a ``plugins: {prune: ...}`` config section, or
``slim_plugins.enable("prune", ...)``. Its plan keeping (``slim_before_load_weights``,
``slim_on_checkpoint_save``) works whenever the plugin is not blocked, so the suite's eval and
export commands need no option to load a pruned checkpoint.
"""
from slim_plugins.config import register_options
from slim_plugins.hooks import hookimpl
from slim_plugins.plugins.prune.options import PruneOptions

NAME = "prune"


@hookimpl
def slim_add_options(register):
    register_options(NAME, PruneOptions, register)


@hookimpl
def slim_before_load_weights(run, path):
    from slim_plugins.plugins.prune.workflow import replay_for_checkpoint

    replay_for_checkpoint(run, path)


@hookimpl
def slim_initial_weights(run):
    if run.session.is_enabled(NAME):
        return run.plugin_config(NAME).weights


@hookimpl
def slim_epochs_before_train(run):
    if run.session.is_enabled(NAME):
        return run.plugin_config(NAME).after_epochs


@hookimpl
def slim_stops_before_train(session):
    """``action`` show and analyze end the run in ``slim_before_train``, before any training step
    (unless ``after_epochs`` trains first)."""
    if not session.is_enabled(NAME):
        return None
    config = session.plugin_config(NAME).typed(PruneOptions)
    if config.action in ("show", "analyze") and config.after_epochs is None:
        return f"prune.action={config.action}"
    return None


@hookimpl
def slim_before_train(run):
    if not run.session.is_enabled(NAME):
        return
    from slim_plugins.plugins.prune.workflow import PruneWorkflow

    PruneWorkflow(run, run.plugin_config(NAME).typed(PruneOptions)).execute()


@hookimpl
def slim_after_train(run):
    if not run.session.is_enabled(NAME):
        return
    from slim_plugins.plugins.prune.workflow import finish_report

    finish_report(run)


@hookimpl
def slim_on_checkpoint_save(run, path):
    from slim_plugins.plugins.prune.workflow import save_plan_with_checkpoint

    save_plan_with_checkpoint(run, path)


@hookimpl
def slim_after_load_weights(run, path, exact):
    from slim_plugins.plugins.prune.checks import check_loaded

    check_loaded(run, path, exact)
