"""Write a tiny COCO-format detection set: coloured rectangles on a noisy grey background.

usage: ppdet_shapes.py OUT_DIR [--train 40] [--val 16] [--size 128]
Layout: OUT_DIR/{train,val}/*.png and OUT_DIR/annotations/{train,val}.json; category ids 1..3
(red, green, blue). The same boxes in Pascal VOC format too: OUT_DIR/voc/{train,val}.txt (image
and xml path per line, relative to OUT_DIR), OUT_DIR/voc/xml/*.xml, OUT_DIR/voc/label_list.txt.
Deterministic for a given seed.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image

CLASSES = (("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220)))


def boxes_for(rng, size):
    placed = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            w, h = (int(v) for v in rng.integers(size // 5, size // 2, size=2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(x + w <= px or px + pw <= x or y + h <= py or py + ph <= y for px, py, pw, ph in placed):
                placed.append((x, y, w, h))
                break
    return placed


def write_split(out, split, count, size, rng):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        pixels = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
        for x, y, w, h in boxes_for(rng, size):
            cls = int(rng.integers(0, len(CLASSES)))
            pixels[y:y + h, x:x + w] = CLASSES[cls][1]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": cls + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        file_name = f"{split}_{index:04d}.png"
        Image.fromarray(pixels).save(os.path.join(out, split, file_name))
        images.append({"id": index + 1, "file_name": file_name, "width": size, "height": size})
    write_voc(out, split, images, annotations)
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, (name, _) in enumerate(CLASSES)]
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    with open(os.path.join(out, "annotations", f"{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def write_voc(out, split, images, annotations):
    folder = os.path.join(out, "voc", "xml")
    os.makedirs(folder, exist_ok=True)
    lines = []
    for image in images:
        objects = "".join(
            f"<object><name>{CLASSES[a['category_id'] - 1][0]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{a['bbox'][0]}</xmin><ymin>{a['bbox'][1]}</ymin><xmax>{a['bbox'][0] + a['bbox'][2]}</xmax>"
            f"<ymax>{a['bbox'][1] + a['bbox'][3]}</ymax></bndbox></object>"
            for a in annotations if a["image_id"] == image["id"])
        xml = os.path.join("voc", "xml", os.path.splitext(image["file_name"])[0] + ".xml")
        with open(os.path.join(out, xml), "w") as f:
            f.write(f"<annotation><filename>{image['file_name']}</filename><size><width>{image['width']}</width>"
                    f"<height>{image['height']}</height><depth>3</depth></size>{objects}</annotation>")
        lines.append(f"{split}/{image['file_name']} {xml}")
    with open(os.path.join(out, "voc", f"{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "voc", "label_list.txt"), "w") as f:
        f.write("\n".join(name for name, _ in CLASSES) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    write_split(args.out, "train", args.train, args.size, rng)
    write_split(args.out, "val", args.val, args.size, rng)


if __name__ == "__main__":
    main()
