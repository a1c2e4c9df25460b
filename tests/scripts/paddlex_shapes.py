"""A PaddleX 2 training script that knows nothing of slim-plugins (used by the tests).

usage: paddlex_shapes.py DATA OUT [--epochs N] [--pretrain FILE_OR_DIR]
                         [--sensitivities-file F --eval-metric-loss L]   PaddleX 1.3's train() arguments
                         [--enable-prune JSON]   slim_plugins.enable("prune", **JSON) first (the Python way)
                         [--arch MobileNetV2|ResNet50_vd|...]   a pdx.cls classifier (default MobileNetV2)
       paddlex_shapes.py DATA OUT --load DIR [--export]
Trains a classifier on DATA (an image-folder set) into OUT, or loads DIR with paddlex.load_model.
Prints acc1 (eval batch 6), FLOPs and parameter shapes as JSON on its last line. With --export,
also writes OUT/probe_in.npy and the loaded network's eval output on it, OUT/probe_out.npy (what
the exported model must compute in Paddle Inference).
"""
import argparse
import contextlib
import io
import json
import os


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--pretrain")
    parser.add_argument("--sensitivities-file")
    parser.add_argument("--eval-metric-loss", type=float)
    parser.add_argument("--enable-prune")
    parser.add_argument("--arch", default="MobileNetV2")
    parser.add_argument("--load")
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    if args.enable_prune:
        import slim_plugins

        slim_plugins.enable("prune", **json.loads(args.enable_prune))

    # isort: off
    import paddlex as pdx  # first, as PaddleX scripts do: paddle is imported while paddlex executes
    import paddle
    from paddlex import transforms as T
    # isort: on

    import random

    import numpy as np

    paddle.seed(0)
    np.random.seed(0)  # PaddleX shuffles with numpy and random
    random.seed(0)
    data = args.data
    eval_dataset = pdx.datasets.ImageNet(
        data_dir=data, file_list=os.path.join(data, "val_list.txt"), label_list=os.path.join(data, "labels.txt"),
        transforms=T.Compose([T.Normalize()]), num_workers=0)
    if args.load:
        model = pdx.load_model(args.load)
        if args.export:
            model._export_inference_model(args.out)  # what `paddlex --export_inference` runs
    else:
        train_dataset = pdx.datasets.ImageNet(
            data_dir=data, file_list=os.path.join(data, "train_list.txt"),
            label_list=os.path.join(data, "labels.txt"),
            transforms=T.Compose([T.RandomHorizontalFlip(), T.Normalize()]), shuffle=True, num_workers=0)
        model = getattr(pdx.cls, args.arch)(num_classes=len(train_dataset.labels))
        legacy = {}
        if args.sensitivities_file:
            legacy = dict(sensitivities_file=args.sensitivities_file, eval_metric_loss=args.eval_metric_loss)
        model.train(num_epochs=args.epochs, train_dataset=train_dataset, train_batch_size=6,
                    eval_dataset=eval_dataset, learning_rate=args.lr, lr_decay_epochs=[100],
                    pretrain_weights=args.pretrain, save_dir=args.out, use_vdl=False, log_interval_steps=100,
                    **legacy)
    acc = model.evaluate(eval_dataset, batch_size=6)["acc1"]
    shape = [1, 3] + list(eval_dataset[0][0].shape[1:])
    with contextlib.redirect_stdout(io.StringIO()):
        flops = paddle.flops(model.net, shape, print_detail=False)
    shapes = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    if args.export:
        probe = np.random.RandomState(0).rand(*shape).astype("float32")
        np.save(os.path.join(args.out, "probe_in.npy"), probe)
        exported = model._build_inference_net()(paddle.to_tensor(probe))  # the layer the export saved
        np.save(os.path.join(args.out, "probe_out.npy"), np.asarray(exported.numpy()))
    with open(os.path.join(data, "val_list.txt")) as f:
        first_image = os.path.join(data, f.readline().split()[0])
    prediction = model.predict(first_image)
    print(json.dumps({"acc1": float(acc), "flops": int(flops), "shapes": shapes,
                      "predicted": prediction[0]["category"] if isinstance(prediction, list) else None}))


if __name__ == "__main__":
    main()
