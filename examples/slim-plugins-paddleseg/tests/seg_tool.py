"""A driver doing what PaddleSeg 2.8's tools/train.py and tools/val.py do (the PyPI wheel ships no tools/):
``seg_tool.py train --config C.yml --save_dir D [--resume_model R] [-o key=value ...]`` and
``seg_tool.py val --config C.yml --model_path M.pdparams``. Each prints ``mIoU=<value>`` last."""
import argparse
import random

import numpy as np
import paddle
from paddleseg.core import evaluate, train
from paddleseg.cvlibs import Config, SegBuilder
from paddleseg.utils import metrics, utils


def _paddle3_calculate_area(pred, label, num_classes, ignore_index=255):
    """PaddleSeg 2.8's ``metrics.calculate_area`` predates Paddle 3's 0-d sums (it concatenates
    them); the same areas, stacked. Nothing else of PaddleSeg is changed."""
    if len(pred.shape) == 4:
        pred = paddle.squeeze(pred, axis=1)
    if len(label.shape) == 4:
        label = paddle.squeeze(label, axis=1)
    mask = label != ignore_index
    areas = [[], [], []]
    for i in range(num_classes):
        pred_i = paddle.logical_and(pred == i, mask)
        label_i = label == i
        for area, part in zip(areas, (paddle.logical_and(pred_i, label_i), pred_i, label_i)):
            area.append(paddle.sum(paddle.cast(part, "int64")).reshape([1]))
    return tuple(paddle.concat(area) for area in areas)


if paddle.__version__.split(".")[0] not in ("0", "2"):
    metrics.calculate_area = _paddle3_calculate_area


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["train", "val"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--save_dir", default="output")
    parser.add_argument("--save_interval", type=int, default=1000)
    parser.add_argument("--resume_model", default=None)
    parser.add_argument("--model_path", default=None)
    parser.add_argument("-o", "--opts", nargs="+", default=None)
    args = parser.parse_args()
    paddle.seed(0)
    np.random.seed(0)
    random.seed(0)
    paddle.set_device("cpu")
    cfg = Config(args.config, opts=args.opts)
    builder = SegBuilder(cfg)
    model = builder.model
    if args.command == "train":
        train(model, builder.train_dataset, val_dataset=builder.val_dataset, optimizer=builder.optimizer,
              save_dir=args.save_dir, iters=cfg.iters, batch_size=cfg.batch_size,
              resume_model=args.resume_model, save_interval=args.save_interval,
              log_iters=10 ** 9,  # PaddleSeg 2.8 logs losses as l[0]: an IndexError on Paddle 3 0-d tensors
              losses=builder.loss, keep_checkpoint_max=2, test_config=cfg.test_config)
        # the final weights, as train() left them
        miou = evaluate(model, builder.val_dataset, print_detail=False, **cfg.test_config)[0]
    else:
        utils.load_entire_model(model, args.model_path)
        miou = evaluate(model, builder.val_dataset, print_detail=False, **cfg.test_config)[0]
    print(f"mIoU={float(miou):.6f}")


if __name__ == "__main__":
    main()
