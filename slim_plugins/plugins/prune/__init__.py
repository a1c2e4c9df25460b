"""The prune plugin: see what can be pruned, analyse sensitivities, choose ratios, prune before
training, and keep the pruned shapes through checkpoints, eval, export and resume.

Switched on with ``--plugin prune``, a ``plugins: {prune: ...}`` config section, or
``slim_plugins.enable("prune", ...)``. Its plan keeping (``slim_before_load_weights``,
``slim_on_checkpoint_save``) works whenever the plugin is not blocked, so the suite's eval and
export commands need no option to load a pruned checkpoint.
"""
import os

from slim_plugins.config import bounded, non_empty, optional, to_bool, to_list, to_mapping
from slim_plugins.hooks import hookimpl
from slim_plugins.plugins.prune.sensitivity import DEFAULT_RATIOS

NAME = "prune"

FRACTION = bounded(float, 0, 1, low_open=True, high_open=True)  # 0 < x < 1
POSITIVE = bounded(int, 1)


def weights_file(value):
    """A checkpoint prefix (``Model.save``'s) or ``.pdparams`` path whose file exists: checked when
    given, so a typo stops the command before any training."""
    path = str(value).strip()
    params = path if path.endswith(".pdparams") else path + ".pdparams"
    if not os.path.isfile(params):
        raise ValueError(f"there is no weights file {params}")
    return path


weights_file.__name__ = "a checkpoint prefix or .pdparams path"

OPTIONS = (
    ("ratios", optional(to_mapping(bounded(float, 0, 1, high_open=True))), None,
     "fixed ratios {glob: ratio} on structured parameter names (or PaddleSlim global names)"),
    ("eval_metric_loss", optional(bounded(float, 0, 1, high_open=True)), None,
     "choose per group the largest ratio whose relative metric loss stays under this budget"),
    ("pruned_flops", optional(FRACTION), None,
     "choose ratios from the sensitivities so that this fraction of FLOPs is removed"),
    ("budget_rule", str, "model",
     "model: eval_metric_loss holds for the whole pruned model (ratios backed off until its measured loss "
     "is within it) and pruned_flops takes the candidate plan with the lowest measured loss; per_group: "
     "PaddleSlim's rule, each group alone within the budget"),
    ("criterion", str, "l1_norm", "filter importance: l1_norm, l2_norm or fpgm"),
    ("skip", to_list(str), [], "globs of groups never to prune"),
    ("align", optional(POSITIVE), None, "round kept channels to a multiple of this"),
    ("sen_file", optional(str), None, "sensitivity file (default: <save_dir>/sensitivities.json)"),
    ("sen_ratios", non_empty(to_list(FRACTION)), list(DEFAULT_RATIOS), "ratios the sensitivity analysis tries"),
    ("sen_analyze", to_bool, True,
     "false: take the sensitivities sen_file records as they are and analyse nothing "
     "(PaddleX 1.3's train(sensitivities_file=...))"),
    ("sen_loss_cap", optional(bounded(float, 0)), None,
     "stop a group's analysis after the first ratio whose loss exceeds this "
     "(default: eval_metric_loss when that is how ratios are chosen)"),
    ("sen_search", to_bool, True,
     "search each group's loss-cap crossing by bisection (about log2 of the ratios evaluated) instead of "
     "evaluating every ratio up to the cap; a pruned_flops analysis derives its cap from the target"),
    ("sen_batches", optional(POSITIVE), None, "evaluate only the first N eval batches in the analysis"),
    ("sen_workers", POSITIVE, 1, "local worker processes for the analysis (forked; each takes whole groups)"),
    ("sen_worker_timeout", optional(float), None,
     "seconds a worker may spend on one evaluation before the analysis stops with an error naming it "
     "(default: 20 baseline evaluations, at least 300)"),
    ("action", str, "prune", "prune (then train), show (print groups and exit) or analyze (exit after analysis)"),
    ("report", optional(str), None, "report JSON path (default: <save_dir>/prune_report.json)"),
    ("plot", to_bool, True, "write PNG plots next to the sensitivity file"),
    ("weights", optional(weights_file), None,
     "trained weights loaded before the analysis (a Model.save prefix or .pdparams file; hapi scripts)"),
    ("after_epochs", optional(POSITIVE), None,
     "train this many epochs first, then analyse, prune and train on to the last epoch (hapi scripts)"),
)
CHOICES = {"criterion": ("l1_norm", "l2_norm", "fpgm"), "action": ("prune", "show", "analyze"),
           "budget_rule": ("model", "per_group")}


@hookimpl
def slim_add_options(register):
    for name, type_, default, help_ in OPTIONS:
        register(NAME, name, type_, default, help_, CHOICES.get(name))


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
def slim_before_train(run):
    if not run.session.is_enabled(NAME):
        return
    from slim_plugins.plugins.prune.workflow import PruneWorkflow

    PruneWorkflow(run, run.plugin_config(NAME)).execute()


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
