"""A PaddleX 2 detector training script that knows nothing of slim-plugins (used by the tests).

usage: paddlex_boxes.py DATA OUT [--epochs N] [--size PX] [--pretrain FILE]
       paddlex_boxes.py DATA OUT --load DIR
Trains YOLOv3 + MobileNetV1 from scratch (pretrain_weights=None: offline) on DATA (a VOC set)
into OUT, or loads DIR with paddlex.load_model. Prints the VOC bbox_map, the conv FLOPs of one
forward pass, the sum of its raw head outputs, the parameter shapes and the boxes predicted for
the first val image as JSON on its last line.
"""
import argparse
import json
import os


def conv_flops(net, size):
    """Multiply-adds of every Conv2D in one eval forward pass of a constant SIZE x SIZE image, and
    the sum of the raw head outputs (compares two networks even when neither finds a box)."""
    import paddle

    total, head = [0], [0.0]

    def count(layer, inputs, output):
        kh, kw = layer.weight.shape[2:]
        total[0] += int(output.numel()) * (layer.weight.shape[1]) * kh * kw

    def add_head(layer, inputs, output):
        head[0] += float(output.abs().sum())

    hooks = [m.register_forward_post_hook(count) for m in net.sublayers() if isinstance(m, paddle.nn.Conv2D)]
    hooks += [m.register_forward_post_hook(add_head) for name, m in net.named_sublayers()
              if isinstance(m, paddle.nn.Conv2D) and "yolo_output" in name]
    was_training = net.training
    net.eval()
    with paddle.no_grad():
        net({"image": paddle.ones([1, 3, size, size]), "im_shape": paddle.to_tensor([[float(size)] * 2]),
             "scale_factor": paddle.ones([1, 2])})
    for hook in hooks:
        hook.remove()
    if was_training:
        net.train()
    return total[0], head[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--pretrain")
    parser.add_argument("--load")
    parser.add_argument("--export", action="store_true", help="with --load: PaddleX's inference export into OUT")
    args = parser.parse_args()

    # isort: off
    import paddlex as pdx  # first, as PaddleX scripts do
    import paddle
    from paddlex import transforms as T
    # isort: on

    import random

    import numpy as np

    paddle.seed(0)
    np.random.seed(0)
    random.seed(0)
    data = args.data
    eval_dataset = pdx.datasets.VOCDetection(
        data_dir=data, file_list=os.path.join(data, "val_list.txt"), label_list=os.path.join(data, "labels.txt"),
        transforms=T.Compose([T.Resize(args.size), T.Normalize()]), num_workers=0)
    if args.load:
        model = pdx.load_model(args.load)
        if args.export:
            model._export_inference_model(args.out)  # what `paddlex --export_inference` runs
    else:
        train_dataset = pdx.datasets.VOCDetection(
            data_dir=data, file_list=os.path.join(data, "train_list.txt"),
            label_list=os.path.join(data, "labels.txt"),
            transforms=T.Compose([T.RandomHorizontalFlip(), T.Resize(args.size), T.Normalize()]),
            shuffle=True, num_workers=0)
        model = pdx.det.YOLOv3(num_classes=len(train_dataset.labels), backbone="MobileNetV1")
        model.train(num_epochs=args.epochs, train_dataset=train_dataset, train_batch_size=len(train_dataset.file_list),
                    eval_dataset=eval_dataset, learning_rate=args.lr, warmup_steps=0, lr_decay_epochs=[1000],
                    pretrain_weights=args.pretrain, save_dir=args.out, use_vdl=False, log_interval_steps=100,
                    save_interval_epochs=args.epochs)
    metrics = model.evaluate(eval_dataset, batch_size=1)
    shapes = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    with open(os.path.join(data, "val_list.txt")) as f:
        first_image = os.path.join(data, f.readline().split()[0])
    boxes = [[b["category_id"], round(float(b["score"]), 5)] + [round(float(v), 3) for v in b["bbox"]]
             for b in model.predict(first_image)]
    flops, head = conv_flops(model.net, args.size)
    print(json.dumps({"bbox_map": float(metrics["bbox_map"]), "flops": flops, "head": head,
                      "shapes": shapes, "boxes": boxes[:20], "status": model.status}))


if __name__ == "__main__":
    main()
