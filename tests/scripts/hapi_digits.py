"""A plain hapi training script that knows nothing of slim-plugins (used by the tests).

usage: hapi_digits.py OUT_DIR [--epochs N] [--init WEIGHTS | --finetune WEIGHTS] [--save-dir DIR]
                      [--load [--export]]
Trains a small CNN (from WEIGHTS, loaded with ``Model.load`` before ``fit``, if given) on
scikit-learn's digits, saves OUT_DIR/final(.pdparams) and prints the
accuracy and the parameter shapes as JSON on its last line.
"""
import argparse
import json

import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec
from sklearn.datasets import load_digits


def datasets():
    digits = load_digits()
    x = (digits.images.astype("float32") / 16.0)[:, None]
    y = digits.target.astype("int64")[:, None]
    order = np.random.RandomState(0).permutation(len(y))
    test, train = order[:360], order[360:]
    return tuple(paddle.io.TensorDataset([paddle.to_tensor(x[part]), paddle.to_tensor(y[part])])
                 for part in (train, test))


def network():
    return nn.Sequential(
        nn.Conv2D(1, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU(),
        nn.Conv2D(32, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(),
        nn.MaxPool2D(2),
        nn.Conv2D(64, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(),
        nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(64, 10))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--init", help="trained weights to load before fit (fine-tuning)")
    parser.add_argument("--load", action="store_true", help="evaluate OUT/final instead of training")
    parser.add_argument("--export", action="store_true", help="with --load: also save an inference model")
    parser.add_argument("--finetune", help="load these weights and optimizer state, then train (fine-tune)")
    parser.add_argument("--save-dir", help="fit's save_dir: a checkpoint after every epoch")
    args = parser.parse_args()
    paddle.seed(0)
    train, test = datasets()
    model = paddle.Model(network(), inputs=[InputSpec([None, 1, 8, 8], "float32", "image")],
                         labels=[InputSpec([None, 1], "int64", "label")])
    model.prepare(paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters()),
                  nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    if args.load:
        model.load(f"{args.out}/final")
        if args.export:
            model.save(f"{args.out}/inference", training=False)
    else:
        if args.init:
            model.load(args.init, reset_optimizer=True)
        if args.finetune:
            model.load(args.finetune)  # optimizer state too: applied at the first step
        model.fit(train, test, batch_size=64, epochs=args.epochs, verbose=0, save_dir=args.save_dir)
        model.save(f"{args.out}/final")
    acc = model.evaluate(test, batch_size=64, verbose=0)["acc"]
    shapes = {k: list(v.shape) for k, v in model.network.state_dict().items()}
    from paddle.hapi.model import DynamicGraphAdapter  # what slim-plugins patched in this process

    patched = {name: bool(getattr(f, "_slim_patched", False)) for name, f in (
        ("fit", paddle.Model.fit), ("save", paddle.Model.save), ("load", paddle.Model.load),
        ("data_parallel", DynamicGraphAdapter.__init__))}
    print(json.dumps({"acc": acc, "shapes": shapes, "patched": patched}))


if __name__ == "__main__":
    main()
