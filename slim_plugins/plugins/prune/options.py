"""The prune plugin's options, declared once: ``slim_add_options``, the YAML/command-line checks,
``slim-plugins list`` and the README's option table all come from :class:`PruneOptions`.

Adding an option is adding one field here; ``python scripts/options_table.py`` then prints the
README table to paste (``tests/test_docs.py`` checks the README has it).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from slim_plugins.config import bounded, non_empty, option, optional, to_bool, to_list, to_mapping
from slim_plugins.plugins.prune.sensitivity import DEFAULT_RATIOS

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


@dataclass(frozen=True)
class PruneOptions:
    """What ``--prune.KEY VALUE`` (or ``plugins: {prune: {KEY: VALUE}}``) sets, checked and typed."""

    ratios: Optional[Dict[str, float]] = option(
        None, optional(to_mapping(bounded(float, 0, 1, high_open=True))),
        "fixed ratios `{glob: ratio}`, each in [0, 1), on structured names (`backbone.conv1.*=0.3`), "
        "or PaddleSlim names (`conv2d_3.w_0`)")
    eval_metric_loss: Optional[float] = option(
        None, optional(bounded(float, 0, 1, high_open=True)),
        "in [0, 1): relative metric-loss budget: per group, the largest ratio within it (interpolated), "
        "then (with `budget_rule model`) all ratios scaled back until the whole pruned model's measured "
        "loss is within it")
    pruned_flops: Optional[float] = option(
        None, optional(FRACTION),
        "in (0, 1): remove this fraction of FLOPs: with `budget_rule model`, the plan with the lowest "
        "whole-model loss (batch-norm statistics re-estimated) among the loss-budget bisection plan, a "
        "uniform ratio and two blends")
    pruned_latency: Optional[float] = option(
        None, optional(FRACTION),
        "in (0, 1): cut this fraction of the measured latency (Paddle Inference CPU, at `latency_batch_size`): "
        "ratios shaped by the sensitivities, scaled until the measured cut is within 0.025 of the target "
        "(see \"Latency\")")
    latency_batch_size: Optional[int] = option(
        None, optional(POSITIVE), "batch size latency is measured at besides 1, and the one `pruned_latency` "
        "targets", shown="the eval batch size")
    latency_threads: int = option(1, POSITIVE, "CPU threads of every latency measurement (Paddle Inference, "
                                               "ONNX Runtime)")
    latency_seconds: float = option(
        12.0, bounded(float, 0, low_open=True),
        "seconds one comparison of the pruned and the unpruned model runs at most (per batch size and runtime; "
        "longer until 64 paired runs, 5x at most); it stops sooner once the cut is known to +-1 point")
    budget_rule: str = option(
        "model", str,
        "`model`: the budget holds for the whole model (see above); `per_group`: PaddleSlim's rule, "
        "each group alone within it (its exact ratios)", choices=("model", "per_group"))
    criterion: str = option("l1_norm", str, "filter importance: `l1_norm`, `l2_norm` or `fpgm`",
                            choices=("l1_norm", "l2_norm", "fpgm"))
    skip: List[str] = option([], to_list(str), "globs of groups never pruned")
    align: Optional[int] = option(None, optional(POSITIVE), "round kept channels to a multiple (≥ 1)")
    sen_file: Optional[str] = option(
        None, optional(str), "the sensitivity file (resumed if it exists and matches the model)",
        shown="`<save_dir>/sensitivities.json`")
    sen_ratios: List[float] = option(list(DEFAULT_RATIOS), non_empty(to_list(FRACTION)),
                                     "ratios analysed (at least one, each in (0, 1))")
    sen_analyze: bool = option(
        True, to_bool, "`false`: use `sen_file` as it is (e.g. an imported PaddleSlim/PaddleX file, "
        "PaddleX 1.3's `train(sensitivities_file=...)`), analyse nothing")
    sen_loss_cap: Optional[float] = option(
        None, optional(bounded(float, 0)),
        "stop a group after the first ratio whose loss exceeds this (≥ 0)", shown="`eval_metric_loss`")
    sen_search: bool = option(
        True, to_bool,
        "bisection for each group's crossing of the cap (ceil(log2(n+1)) evaluations of n ratios, same "
        "chosen ratio on a loss that grows with the ratio); `pruned_flops` derives the cap from the "
        "target; `false`: every ratio up to the cap")
    sen_batches: Optional[int] = option(
        None, optional(POSITIVE), "evaluate only the first N (≥ 1) eval batches in the analysis", shown="all")
    sen_workers: int = option(1, POSITIVE, "forked local worker processes for the analysis (≥ 1), each "
                                           "taking whole groups")
    sen_worker_timeout: Optional[float] = option(
        None, optional(float),
        "a worker silent this long (seconds) on one evaluation stops the analysis with an error naming it",
        shown="20 baseline evaluations, at least 300 s")
    action: str = option(
        "prune", str, "`prune` (then train), `show` (list prunable groups and exit), "
        "`analyze` (exit after the analysis; not with `ratios`); the suites' train loaders are not built "
        "for `show` and `analyze`", choices=("prune", "show", "analyze"))
    report: Optional[str] = option(None, optional(str), "before/after figures (JSON)",
                                   shown="`<save_dir>/prune_report.json`")
    plot: bool = option(
        True, to_bool, "PNG plots: the sensitivity curves (every group in the legend, its chosen ratio starred) next "
        "to the sensitivity file; pruned FLOPs against the loss budget (`<report>.flops.png`, the chosen plan "
        "starred, for `pruned_flops` too) next to the report")
    weights: Optional[str] = option(
        None, optional(weights_file),
        "hapi scripts: trained weights (a `Model.save` prefix or a `.pdparams` file, which must exist) loaded "
        "before the analysis, with a fresh optimizer state")
    after_epochs: Optional[int] = option(
        None, optional(POSITIVE),
        "hapi scripts: train N (≥ 1, below `fit`'s epochs) epochs, then analyse, prune and train on to the last "
        "epoch, in the one `fit`")
