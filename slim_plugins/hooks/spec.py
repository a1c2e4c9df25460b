"""Hook specifications of slim-plugins.

Two kinds of hooks:

* **What an adapter exposes** (``slim_model`` ... ``slim_world``): query hooks answered by the
  adapter that owns the run (``run.adapter``); the first non-None result wins, so a plugin may
  answer before an adapter to override one piece.
* **Lifecycle events** (``slim_before_load_weights`` ... ``slim_on_run_end``): fired by an adapter
  from its suite's own entry points; every implementation is called.

Call every hook with keyword arguments. Implementations may take a subset of the arguments.
"""
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple

from slim_plugins.hooks import hookspec

if TYPE_CHECKING:  # annotations only: importing paddle here would make the start-up hook heavy
    import paddle

    from slim_plugins.run import Metric, TrainingRun

# --------------------------------------------------------------------------------------------
# set-up


@hookspec(historic=True)
def slim_add_options(register: Callable[..., Any]) -> None:
    """Declare the configuration keys of a plugin.

    :param register: ``register(plugin, name, type, default, help, choices=None)``. ``type`` is a
        callable that converts a string from the command line (``float``, ``int``, ``str``,
        ``bool``, ``list`` ...). Unknown keys given by a user are rejected with the list of
        declared ones.

    Historic: an implementation registered late is still called. Fires once per session.
    """


@hookspec(historic=True)
def slim_register_adapters(register: Callable[..., Any]) -> None:
    """Contribute adapters.

    :param register: ``register(adapter)`` with an :class:`slim_plugins.adapters.Adapter`.

    Historic. Fires when the session starts; adapters from entry points register here.
    """


# --------------------------------------------------------------------------------------------
# what an adapter exposes; ``run`` is a :class:`slim_plugins.run.TrainingRun`


@hookspec(firstresult=True)
def slim_model(run: "TrainingRun") -> Optional["paddle.nn.Layer"]:
    """The network being trained: a ``paddle.nn.Layer``, not a ``DataParallel`` wrapper.

    :param run: the training run.
    :returns: the layer, or None if this implementation does not own ``run``.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_optimizer(run: "TrainingRun") -> Optional["paddle.optimizer.Optimizer"]:
    """The optimizer of the run, if it exists yet (pruning prunes its accumulators too).

    :returns: a ``paddle.optimizer.Optimizer`` or None. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_train_loader(run: "TrainingRun") -> Optional[Iterable]:
    """The training data: an iterable of batches in the suite's own format.

    :returns: the loader or None. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_eval_loader(run: "TrainingRun") -> Optional[Iterable]:
    """The evaluation data: an iterable of batches in the suite's own format.

    :returns: the loader or None. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_metric(run: "TrainingRun") -> Optional["Metric"]:
    """How to score the current model with the suite's own metric.

    :returns: a :class:`slim_plugins.run.Metric` whose ``evaluate(max_batches=None)`` returns a
        float where higher is better (mAP, hmean, accuracy), or None. Stops at the first
        non-None result.
    """


@hookspec(firstresult=True)
def slim_input_spec(run: "TrainingRun") -> Optional[List[Any]]:
    """The inputs the model is traced with.

    :returns: a list of ``paddle.static.InputSpec`` (batch dimension may be None/-1) or None.
        Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_forward_inputs(run: "TrainingRun", batch_size: int) -> Optional[List[Any]]:
    """Dummy inputs for one forward pass, for models whose ``forward`` takes no plain tensor list
    (e.g. a dict of image, scale factor and image shape).

    :param batch_size: the batch size wanted.
    :returns: the positional arguments of ``model(*args)`` as a list, or None to build them
        from :func:`slim_input_spec`. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_trace_inputs(run: "TrainingRun") -> Optional[List[Any]]:
    """What PaddleSlim's tracer receives to turn the model into a static graph, for models that
    cannot be traced from shapes alone (a ``forward`` taking a dict of tensors).

    :param run: the training run. An adapter whose model needs labels in train mode fires
        ``slim_before_train`` with the model in eval mode, so that tracing sees the inference path.
    :returns: a list of shapes (``[[1, 3, 224, 224]]``), or a list of example inputs passed to
        ``model(*inputs)`` (tensors, or one dict of tensors), or None to trace with shapes of batch
        1 taken from :func:`slim_input_spec` / :func:`slim_forward_inputs`. Stops at the first
        non-None result.
    """


@hookspec(firstresult=True)
def slim_trace_mode(run: "TrainingRun") -> Optional[str]:
    """The mode the model must be in while PaddleSlim traces it to find prunable groups.

    :param run: the training run.
    :returns: ``"train"`` (e.g. a DB detector, whose threshold branch runs only in training),
        ``"eval"`` (e.g. a model whose training forward needs labels), or None to trace the
        model in whatever mode it is in. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_trace_context(run: "TrainingRun") -> Optional[ContextManager]:
    """A context manager the prune plugin enters while it turns the model into a program
    (``paddle.jit.to_static``) to find the prunable groups: the adapter makes its suite's inference
    code traceable there without changing what the network computes, e.g. post-processing ops the
    suite builds only through the old static API (paddledet 2.6's ``multiclass_nms`` under PIR).

    :param run: the training run.
    :returns: a context manager, or None when the model traces as it is. Stops at the first
        non-None result.
    """


@hookspec(firstresult=True)
def slim_flops_rows(run: "TrainingRun") -> Optional[Dict[str, int]]:
    """The rows per image at which FLOPs count sublayers whose row count depends on the data
    (a two-stage detector's RoI head runs once per proposal, and the weights decide how many
    proposals there are): the prune plugin counts them per row times this, so that before and
    after pruning, and every plan a FLOPs target compares, count the same work.

    :param run: the training run.
    :returns: ``{sublayer name prefix: rows per image}`` (e.g. ``{"bbox_head": 1000}``, the RPN's
        ``post_nms_top_n`` at test time), or None: such layers are then counted at the rows of
        the first measurement. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_save_dir(run: "TrainingRun") -> Optional[str]:
    """Where the run writes checkpoints; plugins write their artifacts here.

    :returns: a directory path or None. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_world(run: "TrainingRun") -> Optional[Tuple[int, int]]:
    """The process's place in a distributed run.

    :returns: ``(rank, world_size)`` or None. Stops at the first non-None result; the default
        reads ``PADDLE_TRAINER_ID`` / ``PADDLE_TRAINERS_NUM``.
    """


@hookspec(firstresult=True)
def slim_train_forward(run: "TrainingRun") -> Optional[Callable[[], Any]]:
    """One training-mode forward pass on a real batch, for branches the traced programs miss
    (e.g. a head that runs only when given labels, such as PaddleOCR's SAR head in MultiHead).

    :param run: the training run.
    :returns: a callable taking no arguments that runs the model's training forward on one real
        batch (the model is in train mode when it is called), or None. Stops at the first
        non-None result. The prune plugin calls it with candidate groups pruned to find groups
        whose pruning breaks such a branch, and skips them with the reason.
    """


@hookspec(firstresult=True)
def slim_initial_weights(run: "TrainingRun") -> Optional[str]:
    """Trained weights to load into the model before training starts, for a plugin that must see
    a trained model (a sensitivity analysis of random weights is noise).

    :param run: the training run.
    :returns: a checkpoint prefix or ``.pdparams`` path, or None. Answered by plugins (the prune
        plugin's ``weights`` option). An adapter that can load them does so before
        ``slim_before_train`` and sets ``run.weights_loaded``; a plugin refuses the option on
        an adapter that did not. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_epochs_before_train(run: "TrainingRun") -> Optional[int]:
    """Epochs to train the model as it is before ``slim_before_train`` fires, so that a plugin
    changes a trained model and the same command trains on to the end.

    :param run: the training run.
    :returns: a number of epochs (>= 1), or None for "before the first one". Answered by plugins
        (the prune plugin's ``after_epochs`` option). An adapter whose loop has an epoch-boundary
        hook fires ``slim_before_train`` there, keeping optimizer and data-parallel wrapper
        consistent, and sets ``run.epochs_done``; a plugin refuses the option on an adapter that
        did not. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def slim_stops_before_train(session: Any) -> Optional[str]:
    """Will a plugin end the run in ``slim_before_train``, before any training step (the prune
    plugin's ``action show`` and ``analyze``)? Asked by adapters before the run exists, while the
    suite builds its objects: one that gets a reason may leave out what only training uses (the
    train loader: its dataset parsing, worker processes and prefetch). Ask
    :meth:`slim_plugins.session.Session.stops_before_train`.

    :param session: the :class:`slim_plugins.session.Session` (options and enabled plugins).
    :returns: why, in a few words a log line can name (``prune.action=show``), or None. Answer
        only when certain: the plugin must then end every run of this process (with
        :class:`~slim_plugins.errors.StopRun` or an error) before the suite's training loop starts.
        Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------
# lifecycle events, in the order they fire


@hookspec
def slim_before_load_weights(run: "TrainingRun", path: str) -> None:
    """Weights are about to be loaded into ``run.model`` from ``path`` (train resume, eval,
    export, or plain load). Plugins that change shapes rebuild them here.

    :param run: the training run.
    :param path: the checkpoint prefix or file the suite loads from.

    Fires before every weight load the adapter sees, in every process.
    """


@hookspec
def slim_after_load_weights(run: "TrainingRun", path: str, exact: bool) -> None:
    """The suite has loaded weights from ``path`` into ``run.model``. Most suites skip a tensor
    whose shape differs from the model's with a warning at most, and go on with random weights
    there: the prune plugin compares the checkpoint's shapes with the model's here and raises a
    :class:`~slim_plugins.errors.ShapeMismatchError` (one line, naming the plan file).

    :param run: the training run.
    :param path: what ``slim_before_load_weights`` got: the checkpoint prefix, file or directory.
    :param exact: True when every tensor must fit (resume, eval, export, a model load); False for
        pretrained weights a training starts from, where the suite may skip tensors on purpose
        (another number of classes changes the head).

    Fires after every weight load the adapter sees, in every process; also when the suite's own
    load refused the shapes (the hapi ``Model.load`` raises), so that this hook's error replaces it.
    """


@hookspec
def slim_before_train(run: "TrainingRun") -> None:
    """:param run: the training run.

    The model, optimizer and data exist and training is about to start: the place to change
    the model (prune). Fires once per run, before data-parallel wrapping and EMA where the
    suite allows, on every rank.
    """


@hookspec
def slim_on_checkpoint_save(run: "TrainingRun", path: str) -> None:
    """The suite is about to save a checkpoint; plugins write their side files next to it.

    :param run: the training run.
    :param path: the checkpoint prefix (``output/model_final``) or file the suite writes.

    Fires before every save the adapter sees, on every rank (plugins write on rank 0 only):
    a process killed between the side file and the weights never leaves new weights beside an
    old side file.
    """


@hookspec
def slim_before_export(run: "TrainingRun", path: str) -> None:
    """The model is about to be exported for inference.

    :param run: the training run.
    :param path: the export prefix or directory.

    Fires once per export, before the suite converts the model.
    """


@hookspec
def slim_after_train(run: "TrainingRun") -> None:
    """Training returned normally. Plugins write their reports here.

    :param run: the training run.

    Fires once per train call that returns, before ``slim_on_run_end``.
    """


@hookspec
def slim_on_run_end(run: "TrainingRun", error: Optional[BaseException]) -> None:
    """The suite's train call (or the pruning before it) has ended, normally or not: release what
    the run holds (temporary files, caches), whatever happened.

    :param run: the training run.
    :param error: None after a normal end (after ``slim_after_train``); otherwise the exception
        that ends the run: an error, ``KeyboardInterrupt``, or ``SystemExit`` (e.g. the prune
        plugin's ``action analyze`` exits after the analysis). It propagates after this hook.

    Fires once per train call of the run, on every rank. An error raised here replaces none:
    implementations must not raise.
    """
