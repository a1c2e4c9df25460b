"""PaddleDetection's tools/train.py, eval.py and export_model.py in one script (the paddledet
wheel ships no tools/): the same calls in the same order, knowing nothing of slim-plugins; its
checkpoints are saved as PaddleDetection develop saves them (best_model/model.pdparams too; with
PPDET_DEVELOP_LAYOUT=1 straight in save_dir, not save_dir/<config name>).

usage: ppdet_tools.py train  -c CFG [-o k=v ...] [-r CKPT] [--eval] [--slim_config SLIM]
       ppdet_tools.py eval   -c CFG [-o weights=...] [--slim_config SLIM]
       ppdet_tools.py export -c CFG [-o weights=...] [--output_dir DIR]
The last stdout line is JSON: the model's parameter shapes (after training / loading).
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")  # as tools/train.py does

import paddle  # noqa: E402
import ppdet.utils.check as check  # noqa: E402


def save_best_model_as_develop_does():
    """PaddleDetection develop's ``ppdet.utils.checkpoint.save_model`` writes the best weights
    twice, within the one call: ``best_model.pdparams`` and ``best_model/model.pdparams``; the
    2.6.0 wheel writes the first only. Its ``paddle.save`` (looked up at call time) does both here."""
    import os

    from ppdet.utils import checkpoint

    class DevelopPaddle:
        def __getattr__(self, name):
            return getattr(paddle, name)

        @staticmethod
        def save(obj, path, *args, **kwargs):
            paddle.save(obj, path, *args, **kwargs)
            if os.path.basename(path) == "best_model.pdparams":
                folder = os.path.join(os.path.dirname(path), "best_model")
                os.makedirs(folder, exist_ok=True)
                paddle.save(obj, os.path.join(folder, "model.pdparams"), *args, **kwargs)

    checkpoint.paddle = DevelopPaddle()


def checkpoints_in_save_dir_as_develop_does():
    """With PPDET_DEVELOP_LAYOUT=1, checkpoints go where PaddleDetection develop's Checkpointer
    writes them, ``save_dir`` itself; the 2.6.0 wheel writes to ``save_dir/<config name>``."""
    import os

    if os.environ.get("PPDET_DEVELOP_LAYOUT") != "1":
        return
    from ppdet.engine import callbacks

    init = callbacks.Checkpointer.__init__

    def develop_init(self, model):
        init(self, model)
        self.save_dir = model.cfg.save_dir

    callbacks.Checkpointer.__init__ = develop_init


save_best_model_as_develop_does()
checkpoints_in_save_dir_as_develop_does()

from ppdet.core.workspace import load_config, merge_config  # noqa: E402
from ppdet.engine import Trainer, init_parallel_env  # noqa: E402
from ppdet.slim import build_slim_model  # noqa: E402
from ppdet.utils.cli import ArgsParser, merge_args  # noqa: E402


def fix_assigners_for_paddle3():
    """paddledet 2.6.0 (the newest wheel) adds the int64 argmax of its ATSS / TaskAligned assigners
    to int32 label indices, which Paddle 3 refuses; PaddleDetection's sources cast the labels.
    A user's checkout has that fix; this driver, built on the wheel, applies it before training."""
    if int(paddle.__version__.split(".")[0]) < 3 and not paddle.__version__.startswith("0.0"):
        return
    import functools
    import inspect

    from ppdet.modeling.assigners.atss_assigner import ATSSAssigner
    from ppdet.modeling.assigners.task_aligned_assigner import TaskAlignedAssigner

    for cls in (ATSSAssigner, TaskAlignedAssigner):
        forward, signature = cls.forward, inspect.signature(cls.forward)

        @functools.wraps(forward)
        def int64_labels(*args, _forward=forward, _signature=signature, **kwargs):
            bound = _signature.bind(*args, **kwargs)
            labels = bound.arguments.get("gt_labels")
            if labels is not None and labels.dtype != paddle.int64:
                bound.arguments["gt_labels"] = labels.astype("int64")
            return _forward(*bound.args, **bound.kwargs)

        cls.forward = int64_labels


def fix_rpn_for_0d_shapes():
    """paddledet 2.6.0's RPN head, RoI sampling and ``BBoxPostProcess.get_pred`` concatenate per-image counts
    (``paddle.shape(rois)[0]``, ``bbox_num[i]``), 0-D tensors since Paddle 2.5, which
    ``paddle.concat`` refuses: every Faster / Mask / Cascade R-CNN forward fails (RPN: train and
    eval) on Paddle 2.6 and 3. PaddleDetection's sources keep them 1-D; this driver gives those
    modules of the wheel a ``paddle`` whose ``concat`` does the same."""
    import types

    from ppdet.modeling import post_process
    from ppdet.modeling.proposal_generator import rpn_head, target

    if getattr(rpn_head.paddle, "_fixed_0d", False):
        return

    class Paddle(types.ModuleType):
        _fixed_0d = True

        def __getattr__(self, name):
            return getattr(paddle, name)

    def concat(x, axis=0, name=None):
        if isinstance(x, (list, tuple)):
            x = [t.reshape([1]) if len(t.shape) == 0 else t for t in x]
        out = paddle.concat(x, axis=axis, name=name)  # a static loop's tensor array of 0-D counts gives 0-D
        return out.reshape([-1]) if len(out.shape) == 0 else out

    proxy = Paddle("paddle")
    proxy.concat = concat
    rpn_head.paddle = post_process.paddle = target.paddle = proxy


def parse_args(command, argv):
    parser = ArgsParser()
    parser.add_argument("--slim_config", default=None, type=str)
    if command == "train":
        parser.add_argument("-r", "--resume", default=None)
        parser.add_argument("--eval", action="store_true", default=False)
    if command == "export":
        parser.add_argument("--output_dir", type=str, default="output_inference")
    return parser.parse_args(argv)


def main(argv):
    command, rest = argv[0], argv[1:]
    fix_assigners_for_paddle3()
    fix_rpn_for_0d_shapes()
    flags = parse_args(command, rest)
    cfg = load_config(flags.config)
    merge_args(cfg, flags)
    merge_config(flags.opt)
    if flags.slim_config:
        cfg = build_slim_model(cfg, flags.slim_config, mode={"export": "test"}.get(command, command))
    merge_config(flags.opt)
    check.check_config(cfg)
    if command != "export":
        init_parallel_env()
    else:
        paddle.set_device("cpu")
    trainer = Trainer(cfg, mode={"export": "test"}.get(command, command))
    if command == "train":
        if flags.resume is not None:
            trainer.resume_weights(flags.resume)
        elif cfg.get("pretrain_weights"):
            trainer.load_weights(cfg.pretrain_weights)
        trainer.train(flags.eval)
    elif command == "eval":
        trainer.load_weights(cfg.weights)
        trainer.evaluate()
    else:
        trainer.load_weights(cfg.weights)
        trainer.export(flags.output_dir)
    shapes = {k: list(v.shape) for k, v in trainer.model.state_dict().items()}
    print(json.dumps({"shapes": shapes}))


if __name__ == "__main__":
    main(sys.argv[1:])
