"""The PaddleX 2.x adapter: ``model = pdx.cls.MobileNetV2(...); model.train(...)`` scripts.

PaddleX 2.1 has no callbacks, so its model classes are patched when ``paddlex`` is imported (after
the targets are checked), in every process:

* ``train`` (every class defining it): maps PaddleX 1.3's ``sensitivities_file=`` /
  ``eval_metric_loss=`` onto the prune plugin (PaddleX 2.1's own ``train`` rejects them); with a
  plugin on, remembers the eval dataset, batch size and save dir of the run, and fires
  ``slim_after_train`` and ``slim_on_run_end``;
* ``BaseModel.net_initialize`` (inside ``train``, after the optimizer is built): fires
  ``slim_before_load_weights`` / ``slim_after_load_weights`` for ``pretrain_weights`` /
  ``resume_checkpoint``, then (a plugin on) ``slim_before_train``: weights are loaded, the
  optimizer has not stepped, the training loop (and detector EMA) does not exist yet;
* ``paddlex.load_model`` (under its three names): the fresh network gets
  ``slim_before_load_weights`` before PaddleX loads the weights and ``slim_after_load_weights``
  after: ``import paddlex`` silences Python warnings process-wide, so a pruned checkpoint loaded
  into an unpruned network would otherwise give random weights without a word;

and once a plugin is enabled (or a load rebuilt pruned shapes):

* ``BaseModel.save_model``: ``slim_on_checkpoint_save`` with ``<dir>/model.pdparams``;
* ``BaseModel._export_inference_model``: ``slim_before_export``, then the plan is saved with
  the exported model too (``pdx.load_model`` rebuilds the network from it).

PaddleX 2.1 still imports ``paddle.fluid``, which Paddle 2.6 removed: :func:`install_import_shims`
runs right before ``paddlex`` executes (the start-up hook watches the import).

This module imports neither paddle nor paddlex at import time.
"""
import contextlib
import functools
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict

from slim_plugins.adapters import Adapter
from slim_plugins.errors import AdapterError, OptionError
from slim_plugins.hooks import hookimpl
from slim_plugins.run import Metric

_LEGACY_TRAIN_ARGS = ("sensitivities_file", "eval_metric_loss")


# ------------------------------------------------------------------------------ import shims
def install_import_shims():
    """Make PaddleX 2.1 importable on Paddle >= 2.6: ``paddle.fluid`` aliases onto ``paddle.base``
    for the modules PaddleX imports, and ``core.ops`` (the legacy op table ppdet calls at run
    time) onto ``paddle._legacy_C_ops``. Does nothing on a Paddle that still has ``fluid``."""
    import importlib
    import types
    import zlib  # noqa: F401  Paddle 2.6 exports an old zlib: Python's must load first

    import paddle

    try:
        importlib.import_module("paddle.fluid")
        return
    except ImportError:
        pass
    aliases = {
        "paddle.fluid": "paddle.base",
        "paddle.fluid.framework": "paddle.base.framework",
        "paddle.fluid.core": "paddle.base.core",
        "paddle.fluid.layer_helper": "paddle.base.layer_helper",
        "paddle.fluid.data_feeder": "paddle.base.data_feeder",
        "paddle.fluid.dygraph": "paddle.base.dygraph",
        "paddle.fluid.dataloader": "paddle.io.dataloader",
        "paddle.fluid.dataloader.collate": "paddle.io.dataloader.collate",
    }
    for alias, target in aliases.items():
        if alias not in sys.modules:
            sys.modules[alias] = importlib.import_module(target)
    if "paddle.fluid.dygraph.parallel" not in sys.modules:  # ppcls' downloader
        parallel = types.ModuleType("paddle.fluid.dygraph.parallel")
        parallel.ParallelEnv = paddle.distributed.ParallelEnv
        sys.modules["paddle.fluid.dygraph.parallel"] = parallel
    paddle.fluid = sys.modules["paddle.fluid"]
    core = sys.modules["paddle.fluid.core"]
    if not hasattr(core, "ops") and hasattr(paddle, "_legacy_C_ops"):
        core.ops = paddle._legacy_C_ops  # ppdet's yolo_box, multiclass_nms3, matrix_nms ...


# ------------------------------------------------------------------------------ the adapter
@dataclass
class PaddleXState:
    """The PaddleX adapter's record of a model's run.

    :ivar train_args: the arguments of the current ``train`` call, by name (defaults applied).
    :ivar in_train: inside that call (a subclass's ``train`` calling its parent's passes through).
    """

    train_args: Dict[str, Any] = field(default_factory=dict)
    in_train: bool = False


class PaddleXAdapter(Adapter):
    name = "paddlex"
    weights_hint = "load trained weights: model.train(..., pretrain_weights=PATH/model.pdparams)"
    modules = ("paddlex",)
    distributions = ("paddlex",)
    supported = ("2.1.",)
    targets = {"paddlex:load_model": ("model_dir",), "paddlex.cv.models:load_model": ("model_dir",),
               "paddlex.cv.models.base:BaseModel.net_initialize": ("pretrain_weights", "save_dir",
                                                                     "resume_checkpoint"),
               "paddlex.cv.models.base:BaseModel.save_model": ("save_dir",),
               "paddlex.cv.models.base:BaseModel._export_inference_model": ("save_dir",),
               "paddlex.cv.models.classifier:BaseClassifier.train": (),
               "paddlex.cv.models.classifier:BaseClassifier.evaluate": ("eval_dataset", "batch_size")}
    state_class = PaddleXState

    def patched(self):
        from paddlex.cv.models.base import BaseModel

        return bool(getattr(BaseModel.save_model, "_slim_patched", False))

    def install_loading(self, session):
        """Every process: ``train`` (PaddleX 1.3's pruning arguments switch the prune plugin on),
        the weight loads of ``net_initialize`` and ``paddlex.load_model``."""
        import paddlex
        import paddlex.cv.models as models
        from paddlex.cv.models.base import BaseModel

        if getattr(BaseModel.net_initialize, "_slim_patched", False):
            return
        for cls in _model_classes(models, BaseModel):
            if "train" in cls.__dict__:
                _patch(cls, "train", self._make_train)
        _patch(BaseModel, "net_initialize", self._make_net_initialize)
        load_model = self._make_load_model(models.load_model)
        paddlex.load_model = models.load_model = load_model
        deploy = sys.modules.get("paddlex.deploy")
        if deploy is not None and hasattr(deploy, "load_model"):
            deploy.load_model = load_model

    def install_training(self, session):
        """With a plugin on (or a pruned model loaded): checkpoints and export."""
        from paddlex.cv.models.base import BaseModel

        _patch(BaseModel, "_export_inference_model", self._make_export)
        _patch(BaseModel, "save_model", self._make_save_model)  # last: patched() reads it

    # ------------------------------------------------------------------ patches
    def _make_train(self, train):
        adapter = self
        signature = inspect.signature(train)

        def patched_train(model, *args, **kwargs):
            from slim_plugins.session import get_session

            legacy = {k: kwargs.pop(k) for k in _LEGACY_TRAIN_ARGS if k in kwargs}
            run = adapter.run_for(get_session(), model)
            state = adapter.state(run)
            if state.in_train:  # a subclass's train calling its parent's
                return train(model, *args, **kwargs)
            bound = signature.bind(model, *args, **kwargs)
            if legacy:
                _enable_legacy_pruning(run, legacy, bound)
            if not getattr(adapter, "_active", False):  # no plugin: PaddleX's own train
                return train(*bound.args, **bound.kwargs)
            arguments = dict(bound.arguments)
            for name, param in signature.parameters.items():
                arguments.setdefault(name, param.default)
            _refuse_writing_over_the_trained_model(run, arguments)
            state.train_args, state.in_train = arguments, True
            run.before_train_fired = False
            run.mode = "train"
            with adapter.training(run):
                try:
                    result = train(*bound.args, **bound.kwargs)
                finally:
                    state.in_train = False
                if run.before_train_fired:
                    adapter.fire(run, "slim_after_train")
            return result

        return patched_train

    def _make_net_initialize(self, net_initialize):
        adapter = self

        def patched_net_initialize(model, pretrain_weights=None, save_dir=".", resume_checkpoint=None,
                                   **kwargs):
            from slim_plugins.session import get_session

            run = adapter.run_for(get_session(), model)
            loads = []
            if pretrain_weights is not None and os.path.exists(str(pretrain_weights)):
                loads.append(("pretrain_weights", str(pretrain_weights)))
            if resume_checkpoint is not None and os.path.exists(str(resume_checkpoint)):
                loads.append(("resume_checkpoint", str(resume_checkpoint)))
            for _kind, path in loads:
                adapter.announce_load(run, path)
            result = net_initialize(model, pretrain_weights=pretrain_weights, save_dir=save_dir,
                                    resume_checkpoint=resume_checkpoint, **kwargs)
            for kind, path in loads:  # PaddleX skips mismatched pretrain_weights on purpose (class count)
                adapter.fire(run, "slim_after_load_weights", path=path, exact=kind == "resume_checkpoint")
            if adapter.state(run).in_train and not run.before_train_fired:
                was_training = model.net.training
                model.net.eval()  # detectors trace (and PaddleX evaluates) in eval mode
                try:
                    adapter.fire_before_train(run)
                finally:
                    model.net.train() if was_training else model.net.eval()
            return result

        return patched_net_initialize

    def _make_save_model(self, save_model):
        adapter = self

        def patched_save_model(model, save_dir):
            from slim_plugins.session import get_session

            # the plan before the weights: a kill in between leaves no new weights with an old plan
            run = adapter.run_for(get_session(), model)
            adapter.fire(run, "slim_on_checkpoint_save", path=os.path.join(save_dir, "model.pdparams"))
            if os.path.basename(os.path.normpath(save_dir)) == "best_model" and getattr(model, "eval_metrics", None):
                # train_loop saves best_model right after the evaluation that made it the best
                run.best_checkpoint = (save_dir, float(next(iter(model.eval_metrics.values()))))
            return save_model(model, save_dir)

        return patched_save_model

    def _make_export(self, export):
        adapter = self

        def patched_export(model, save_dir, image_shape=None):
            from slim_plugins.session import get_session

            run = adapter.run_for(get_session(), model)
            target = os.path.join(save_dir, "inference_model")
            adapter.fire(run, "slim_before_export", path=target)
            # pdx.load_model rebuilds an exported model from model.yml: it needs the plan too (first)
            adapter.fire(run, "slim_on_checkpoint_save", path=os.path.join(target, "model"))
            from slim_plugins.compat import restored_forwards  # imports paddle

            with restored_forwards(model.net), _detection_ops(model):  # evaluate() may follow
                return export(model, save_dir, image_shape)

        return patched_export

    def _make_load_model(self, load_model):
        adapter = self

        @functools.wraps(load_model)
        def patched_load_model(model_dir, **params):
            from slim_plugins.session import get_session

            if not params.get("with_net", True):
                return load_model(model_dir, **params)
            with adapter._announce_build(model_dir):
                model = load_model(model_dir, **params)
            # import paddlex silences Python warnings: PaddleX would keep random weights without a word
            adapter.fire(adapter.run_for(get_session(), model), "slim_after_load_weights", path=model_dir, exact=True)
            return model

        patched_load_model._slim_patched = True
        return patched_load_model

    @contextlib.contextmanager
    def _announce_build(self, model_dir):
        """While ``load_model`` runs: every network it builds gets ``slim_before_load_weights``
        (PaddleX has no step between building the network and loading the weights)."""
        import paddlex.cv.models as models
        from paddlex.cv.models.base import BaseModel

        from slim_plugins.session import get_session

        adapter = self
        saved = {cls: cls.__dict__["build_net"] for cls in _model_classes(models, BaseModel)
                 if "build_net" in cls.__dict__}

        def make(build_net):
            def build_and_announce(model, **params):
                net = build_net(model, **params)
                model.net = net
                run = adapter.run_for(get_session(), model)
                run.mode = "load"
                adapter.announce_load(run, model_dir)
                return net

            return build_and_announce

        for cls, build_net in saved.items():
            setattr(cls, "build_net", make(build_net))
        try:
            yield
        finally:
            for cls, build_net in saved.items():
                setattr(cls, "build_net", build_net)

    # ------------------------------------------------------------------ what it exposes
    def model(self, run):
        net = getattr(run.handle, "net", None)
        return getattr(net, "net", net) if type(net).__name__ == "InferNet" else net

    def optimizer(self, run):
        return getattr(run.handle, "optimizer", None)

    def _args(self, run):
        return self.state(run).train_args

    def train_loader(self, run):
        return self._args(run).get("train_dataset")

    def eval_loader(self, run):
        return self._args(run).get("eval_dataset")

    def save_dir(self, run):
        return self._args(run).get("save_dir") or None

    def metric(self, run):
        """PaddleX's own choice: the first value ``model.evaluate`` returns (``acc1``, VOC
        ``bbox_map`` in percent, COCO ``bbox_mmap``, ``miou``), evaluated with the batch size
        the training loop evaluates with (detectors: 1, as PaddleX requires)."""
        model = run.handle
        dataset = self.eval_loader(run)
        if dataset is None:
            return None
        detector = model.model_type == "detector"
        batch_size = 1 if detector else max(1, min(int(self._args(run).get("train_batch_size") or 1),
                                                   dataset.num_samples))
        name = {"classifier": "acc1", "segmenter": "miou"}.get(model.model_type)
        if detector:  # PaddleX evaluates VOC sets with VOC mAP (percent), others with COCO mAP
            name = "bbox_map" if "VOC" in type(dataset).__name__ else "bbox_mmap"

        def evaluate(max_batches=None):
            import copy

            data = copy.copy(dataset)  # every evaluation the same samples in the same order
            data.shuffle = False
            if max_batches and not detector:  # detector metrics hold per-dataset ground truth
                data = _first_samples(data, max(batch_size, max_batches * batch_size))
            if not data.num_samples:
                raise AdapterError(f"an evaluation saw no sample of the eval_dataset ({type(dataset).__name__})",
                                   plugin="paddlex", hint="check the eval dataset's file list and image paths")
            result = model.evaluate(data, batch_size=batch_size)
            return float(next(iter(result.values())))

        chance = 0.0
        if model.model_type == "classifier":
            classes = getattr(model, "num_classes", None) or len(getattr(dataset, "labels", []) or [])
            chance = 1.0 / classes if classes and classes > 1 else None
        return Metric(name, evaluate, chance=chance,
                      weights_hint=self.weights_hint)

    def input_spec(self, run):
        model = run.handle
        if model.model_type == "detector":
            return None
        shape = _sample_shape(model, self.eval_loader(run) or self.train_loader(run))
        return [[None] + shape] if shape else None

    def trace_context(self, run):
        if run.handle.model_type != "detector":
            return None
        import paddlex.ppdet.modeling.ops as ops

        from slim_plugins.adapters.ppdet import tracing_detector

        return tracing_detector(self.model(run), ops)  # PaddleX 2 ships its own copy of ppdet

    def forward_inputs(self, run, batch_size):
        model = run.handle
        if model.model_type != "detector":
            return None
        import paddle

        dataset = self.eval_loader(run) or self.train_loader(run)
        if dataset is None:
            return None
        h, w = _detector_image_size(model, dataset)
        return [{"image": paddle.ones([batch_size, 3, h, w], "float32"),
                 "im_shape": paddle.to_tensor([[float(h), float(w)]] * batch_size),
                 "scale_factor": paddle.ones([batch_size, 2], "float32")}]


# ------------------------------------------------------------------------------ helpers
def _model_classes(models, base):
    found = []
    for module_name in ("classifier", "detector", "segmenter"):
        module = getattr(models, module_name, None)
        for obj in vars(module).values() if module is not None else ():
            if isinstance(obj, type) and issubclass(obj, base) and obj not in found:
                found.append(obj)
    return found


def _patch(owner, name, make):
    original = owner.__dict__[name]
    if getattr(original, "_slim_patched", False):
        return
    patched = make(original)
    functools.update_wrapper(patched, original)
    patched._slim_patched = True
    setattr(owner, name, patched)


def _enable_legacy_pruning(run, legacy, bound):
    """PaddleX 1.3's ``train(sensitivities_file=F, eval_metric_loss=L, pretrain_weights=DIR)``:
    prune with F's sensitivities under the loss budget L (nothing is analysed again) after the
    weights of DIR (1.3 took a model directory, 2.1 takes its model.pdparams) are loaded."""
    session = run.session
    weights = bound.arguments.get("pretrain_weights")
    if isinstance(weights, str) and os.path.isfile(os.path.join(weights, "model.pdparams")):
        bound.arguments["pretrain_weights"] = os.path.join(weights, "model.pdparams")
    options = {}
    if legacy.get("eval_metric_loss") is not None:
        options["eval_metric_loss"] = float(legacy["eval_metric_loss"])
    path = legacy.get("sensitivities_file")
    if path is not None:
        options["sen_file"] = _sensitivity_file(str(path))  # a pickle: the prune plugin converts it
        options["sen_analyze"] = False
        options.setdefault("eval_metric_loss", 0.05)  # PaddleX 1.3's default
        options["budget_rule"] = "per_group"  # 1.3's ratios from 1.3's file (budget_rule model to back off)
    if options:
        session.enable("prune", options, source="python")


def _refuse_writing_over_the_trained_model(run, arguments):
    """A pruned run writes epoch_N/ and best_model/ into its save_dir: one that holds the trained
    model it starts from (pretrain_weights) would replace that model's files with pruned ones."""
    if not run.session.is_enabled("prune") or run.plugin_config("prune").action != "prune":
        return
    weights, save_dir = arguments.get("pretrain_weights"), arguments.get("save_dir") or "output"
    if not isinstance(weights, str) or not os.path.exists(weights):
        return
    folder = os.path.realpath(save_dir)
    if os.path.realpath(weights) == folder or os.path.realpath(weights).startswith(folder + os.sep):
        raise OptionError(
            f"save_dir={save_dir!r} holds the trained model the pruned run starts from "
            f"(pretrain_weights={weights!r}): its checkpoints would overwrite that model", plugin="paddlex",
            hint=f"give the pruned run a save_dir of its own, e.g. save_dir={save_dir.rstrip('/') + '_prune'!r}")


def _sensitivity_file(path):
    """PaddleX 1.3's ``sensitivities_file``: our JSON, or a PaddleSlim/PaddleX pickle."""
    if path == "DEFAULT":
        raise AdapterError(
            "sensitivities_file='DEFAULT' downloaded PaddleX 1.3's per-model file, which does not "
            "fit PaddleX 2 models", plugin="paddlex",
            hint="analyse with --plugin prune --prune.action analyze and pass the sensitivities.json it writes")
    if not os.path.isfile(path):
        raise AdapterError(f"sensitivities_file {path!r} does not exist", plugin="paddlex",
                           hint="pass the sensitivities.json written by the prune plugin, or a *.sensi.data file")
    return path


def _sample_shape(model, dataset):
    """CHW of one eval sample after the eval transforms (PaddleX traces with the same)."""
    if dataset is None:
        return None
    from paddlex.cv.transforms import arrange_transforms

    arrange_transforms(model_type=model.model_type, transforms=dataset.transforms, mode="eval")
    sample = dataset[0]
    image = sample[0] if isinstance(sample, (list, tuple)) else sample["image"]
    return [int(d) for d in image.shape]


def _detector_image_size(model, dataset):
    fixed = getattr(model, "fixed_input_shape", None)
    if fixed and len(fixed) >= 2 and all(isinstance(d, int) and d > 0 for d in fixed[-2:]):
        return int(fixed[-2]), int(fixed[-1])
    for transform in getattr(dataset.transforms, "transforms", []):
        size = getattr(transform, "target_size", None)
        if isinstance(size, int):
            return size, size
        if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(d, int) for d in size):
            return int(size[0]), int(size[1])
    return 608, 608


def _first_samples(dataset, n):
    import copy

    if n >= dataset.num_samples:
        return dataset
    subset = copy.copy(dataset)
    subset.file_list = dataset.file_list[:n]
    subset.num_samples = n
    return subset


adapter = PaddleXAdapter()


@hookimpl
def slim_register_adapters(register):
    register(adapter)


def _detection_ops(model):
    """PaddleX 2's copy of ppdet's NMS and yolo_box ops built through the PIR API while a
    detector exports on Paddle 3 (its own ops only build old-IR ops); nothing else changes."""
    if model.model_type != "detector":
        return contextlib.nullcontext()
    import paddlex.ppdet.modeling.ops as ops

    from slim_plugins.adapters.ppdet import pir_detection_ops

    return pir_detection_ops(ops)
