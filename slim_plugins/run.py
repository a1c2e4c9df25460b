"""Typed state shared by adapters and plugins."""
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple


def format_metric(value, percent=False):
    """A metric value as a user reads it: 4 decimals (``0.9944``), or percent with 2 (``0.15%``)."""
    if value is None:
        return "-"
    return f"{100 * float(value):.2f}%" if percent else f"{float(value):.4f}"


@dataclass
class Metric:
    """The suite's own evaluation, reduced to one number.

    :ivar name: what the number is (``acc``, ``bbox mAP``, ``hmean``).
    :ivar evaluate: ``evaluate(max_batches=None) -> float``, higher is better; ``max_batches``
        limits the evaluation to the first N batches of the eval data. Every call must score the
        same batches (iterate the eval data from its start: :class:`EvalBatches`), and a call
        that saw no batch must raise :class:`~slim_plugins.errors.AdapterError`.
    :ivar chance: the metric of a model that learned nothing, on a 0..1 scale (``1/classes`` for
        a classifier's accuracy, 0 for mAP or hmean), or None when unknown. A metric-driven
        analysis refuses a baseline of 0, and one within 5% of the way from a positive ``chance``
        to 1.
    :ivar weights_hint: how a user of this suite loads trained weights, for that refusal
        (``-o pretrain_weights=PATH``).
    :ivar percent: the suite prints this metric in percent (ppdet's VOC mAP: ``0.15%`` for
        0.0015), so the plugin's lines do too; values stay fractions in files and reports.
    """

    name: str
    evaluate: Callable[..., float]
    chance: Optional[float] = 0.0
    weights_hint: str = ""
    percent: bool = False

    def __call__(self, max_batches=None):
        return float(self.evaluate(max_batches=max_batches))

    def format(self, value):
        """``value`` in the suite's own units, for a line a user reads."""
        return format_metric(value, self.percent)

    def untrained(self, value):
        """Is ``value`` what a model that learned nothing scores? (0 always is: every relative
        loss against it is 0.)"""
        if value == 0:
            return True
        if not self.chance:
            return False
        return value <= self.chance + 0.05 * (1 - self.chance)


class EvalBatches:
    """The first ``limit`` batches of ``source``, from its start at every iteration, counted.

    ``source`` must give a fresh iterator at each ``iter()`` (a ``paddle.io.DataLoader`` does; a
    ppdet reader, which returns itself, does not: pass its ``.dataloader``). Iterating stops
    after ``limit`` batches without leaving the source part-way for the next evaluation.
    """

    def __init__(self, source, limit=None, what="the eval data"):
        self.source, self.limit, self.what = source, limit, what
        self.seen = 0
        self.dataset = getattr(source, "dataset", None)

    def __len__(self):
        n = len(self.source)
        return min(n, int(self.limit)) if self.limit else n

    def __iter__(self):
        self.seen = 0
        batches = iter(self.source)
        if self.limit:
            batches = itertools.islice(batches, int(self.limit))
        for batch in batches:
            self.seen += 1
            yield batch

    def check(self):
        """Raise unless the last iteration saw a batch: a metric of nothing is no measurement."""
        if self.seen == 0:
            from slim_plugins.errors import AdapterError

            raise AdapterError(f"an evaluation saw no batch of {self.what}", plugin="prune",
                               hint="check that the eval dataset is not empty (its file list and "
                                    "image paths) and that prune.sen_batches is at least 1")
        return self.seen


@dataclass
class TrainingRun:
    """One training (or eval, or export) job as an adapter sees it.

    Fields an adapter sets when it creates the run; everything a plugin needs beyond them is
    asked for through the query hooks, via the properties below.

    :ivar adapter: name of the adapter that owns the run (``builtin``, ``ppdet`` ...).
    :ivar session: the :class:`slim_plugins.session.Session` it belongs to.
    :ivar handle: the suite's own object for the run (``paddle.Model``, ppdet ``Trainer`` ...).
    :ivar mode: ``train``, ``eval``, ``export`` or ``load``.
    :ivar before_train_fired: ``slim_before_train`` has fired for this run (it fires once).
    :ivar results: what plugins leave for later hooks and callers, by plugin name (the prune
        plugin's :class:`~slim_plugins.plugins.prune.workflow.PruneResult` under ``"prune"``).
    :ivar adapter_state: the owning adapter's own record of the run (a dataclass of that adapter's,
        e.g. the arguments ``fit`` was called with); not for plugins.
    :ivar weights_loaded: the :func:`~slim_plugins.hooks.spec.slim_initial_weights` the adapter
        loaded before ``slim_before_train``, None if it loaded none.
    :ivar epochs_done: epochs trained when ``slim_before_train`` fired (see
        :func:`~slim_plugins.hooks.spec.slim_epochs_before_train`).
    :ivar best_checkpoint: ``(path, metric)`` of the checkpoint the suite keeps as its best, with
        the metric the suite measured for it (the units of :attr:`metric`), set by the adapter
        when the suite saves it; None when the suite keeps no best (no evaluation during training).
    """

    adapter: str
    session: Any
    handle: Any = None
    mode: str = "train"
    before_train_fired: bool = False
    results: Dict[str, Any] = field(default_factory=dict)
    adapter_state: Any = None
    weights_loaded: Optional[str] = None
    epochs_done: int = 0
    best_checkpoint: Optional[Tuple[str, float]] = None

    def _ask(self, hook, **kwargs):
        return getattr(self.session.pm.hook, hook)(run=self, **kwargs)

    @property
    def model(self):
        return self._ask("slim_model")

    @property
    def optimizer(self):
        return self._ask("slim_optimizer")

    @property
    def train_loader(self):
        return self._ask("slim_train_loader")

    @property
    def eval_loader(self):
        return self._ask("slim_eval_loader")

    @property
    def metric(self) -> Optional[Metric]:
        return self._ask("slim_metric")

    @property
    def input_spec(self):
        return self._ask("slim_input_spec")

    def forward_inputs(self, batch_size=1):
        """Dummy positional inputs for ``model(*inputs)``."""
        inputs = self._ask("slim_forward_inputs", batch_size=batch_size)
        if inputs is not None:
            return inputs
        from slim_plugins import compat

        return compat.dummy_inputs(self.input_spec, batch_size)

    def trace_inputs(self):
        """What PaddleSlim traces the model with (see :func:`~slim_plugins.hooks.spec.slim_trace_inputs`):
        the adapter's answer, else shapes of batch 1 from the input spec or the forward inputs."""
        inputs = self._ask("slim_trace_inputs")
        if inputs is not None:
            return inputs
        from slim_plugins import compat

        spec = self.input_spec
        if spec is not None:
            return compat.trace_shapes(spec)
        inputs = self.forward_inputs(1)
        if inputs is None:
            return None
        if any(isinstance(t, dict) for t in inputs):  # e.g. a detector's {image, im_shape, ...}
            return inputs
        return [list(t.shape) for t in inputs] if len(inputs) > 1 else list(inputs[0].shape)

    @property
    def train_forward(self):
        """A callable running one training forward on a real batch, or None (see
        :func:`~slim_plugins.hooks.spec.slim_train_forward`)."""
        return self._ask("slim_train_forward")

    @property
    def trace_mode(self):
        """``"train"``, ``"eval"`` or None (trace in the model's current mode)."""
        return self._ask("slim_trace_mode")

    def trace_context(self):
        """The adapter's context for tracing the model (see
        :func:`~slim_plugins.hooks.spec.slim_trace_context`); a no-op one when it gives none."""
        import contextlib

        return self._ask("slim_trace_context") or contextlib.nullcontext()

    @property
    def flops_rows(self):
        """``{sublayer prefix: rows per image}`` FLOPs are counted at in data-dependent layers, or
        None (see :func:`~slim_plugins.hooks.spec.slim_flops_rows`)."""
        return self._ask("slim_flops_rows")

    @property
    def initial_weights(self):
        """Weights a plugin wants loaded before training, or None."""
        return self._ask("slim_initial_weights")

    @property
    def epochs_before_train(self):
        """Epochs a plugin wants trained before ``slim_before_train``, or None."""
        return self._ask("slim_epochs_before_train")

    @property
    def save_dir(self):
        return self._ask("slim_save_dir") or "output"

    @property
    def world(self):
        return self._ask("slim_world") or (0, 1)

    @property
    def rank(self):
        return self.world[0]

    @property
    def world_size(self):
        return self.world[1]

    @property
    def is_main_process(self):
        return self.rank == 0

    def plugin_config(self, plugin):
        return self.session.plugin_config(plugin)
