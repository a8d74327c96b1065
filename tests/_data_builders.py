"""Build small data files from the shared real datasets (in tmp_path, never in the repo).

Grounding and ODVG test files are made from tiny_coco val: each image's first
real caption plus the names of its annotated categories, with character spans
pointing at those names.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cl_detect.data.records import DetectionDataset

TINY_COCO = "tiny_coco/tiny_coco"


def tiny_coco_json(shared_data: Path, split: str = "val") -> Path:
    return shared_data / TINY_COCO / "annotations" / f"instances_{split}2017.json"


def tiny_coco_images(shared_data: Path, split: str = "val") -> Path:
    return shared_data / TINY_COCO / f"{split}2017"


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def one_box_coco_json(tmp_path: Path, image_ids: list, grounding: bool = False) -> Path:
    """A COCO (or grounding) json with one 64x64 image per id and one box on each; no image files."""
    images = [{"id": image_id, "file_name": f"img{i}.png", "width": 64, "height": 64}
              for i, image_id in enumerate(image_ids)]
    annotations = [{"id": i + 1, "image_id": image_id, "category_id": 1, "bbox": [4 + i, 4, 20, 20], "area": 400,
                    "iscrowd": 0} for i, image_id in enumerate(image_ids)]
    if grounding:
        for image in images:
            image["caption"] = "a red box"
        for annotation in annotations:
            annotation["tokens_positive"] = [[2, 9]]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "red box"}]}))
    return path


def one_box_yolo_yaml(tmp_path: Path, names: str) -> Path:
    """A YOLO dataset of one 32x32 image with one box, and the given yaml `names` text."""
    import cv2

    for sub in ("images", "labels"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train/images/a.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "train/labels/a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"train: train/images\nnames: {names}\n")
    return yaml_path


def captioned_images(shared_data: Path) -> tuple[dict, dict[int, str], dict[int, list[tuple[int, int]]]]:
    """tiny_coco val instances, caption per image, and per annotation id its name span in the caption.

    The caption is the first real caption + ' Objects: ' + the distinct category names.
    """
    instances = load(tiny_coco_json(shared_data))
    captions = load(shared_data / TINY_COCO / "annotations" / "captions_val2017.json")
    first_caption = {}
    for entry in captions["annotations"]:
        first_caption.setdefault(entry["image_id"], entry["caption"].strip())
    name_of = {c["id"]: c["name"] for c in instances["categories"]}
    caption_of, span_of = {}, {}
    for image in instances["images"]:
        annotations = [a for a in instances["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        caption = first_caption[image["id"]] + " Objects:"
        name_span = {}
        for annotation in annotations:
            name = name_of[annotation["category_id"]]
            if name not in name_span:
                caption += " "
                name_span[name] = (len(caption), len(caption) + len(name))
                caption += name + "."
            span_of[annotation["id"]] = [name_span[name]]
        caption_of[image["id"]] = caption
    return instances, caption_of, span_of


def write_grounding_json(shared_data: Path, out: Path) -> Path:
    """MDETR-style json: images with `caption`, boxes with `tokens_positive` (crowd boxes kept as crowd)."""
    instances, caption_of, span_of = captioned_images(shared_data)
    images = [dict(image, caption=caption_of[image["id"]]) for image in instances["images"]]
    annotations = [dict(a, category_id=1, **({} if a["iscrowd"] else {"tokens_positive": span_of[a["id"]]}))
                   for a in instances["annotations"]]
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    out.write_text(json.dumps(data))
    return out


def write_odvg(shared_data: Path, out: Path, grounding: bool) -> Path:
    """ODVG jsonl of tiny_coco val (crowd boxes left out: ODVG has no crowd flag)."""
    instances, caption_of, span_of = captioned_images(shared_data)
    index_of = {c["id"]: i for i, c in enumerate(instances["categories"])}
    lines = []
    for image in instances["images"]:
        annotations = [a for a in instances["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        entry = {"filename": image["file_name"], "height": image["height"], "width": image["width"]}
        xyxy = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in annotations]
        if grounding:
            caption = caption_of[image["id"]]
            entry["grounding"] = {"caption": caption, "regions": [
                {"bbox": box, "phrase": caption[span_of[a["id"]][0][0]:span_of[a["id"]][0][1]],
                 "tokens_positive": span_of[a["id"]]} for a, box in zip(annotations, xyxy)]}
        else:
            entry["detection"] = {"instances": [
                {"bbox": box, "label": index_of[a["category_id"]]} for a, box in zip(annotations, xyxy)]}
        lines.append(json.dumps(entry))
    out.write_text("\n".join(lines) + "\n")
    if not grounding:
        label_map = {str(i): c["name"] for i, c in enumerate(instances["categories"])}
        (out.parent / "label_map.json").write_text(json.dumps(label_map))
    return out


def assert_same_records(a: DetectionDataset, b: DetectionDataset, atol: float = 1e-3) -> None:
    """Same images, sizes, boxes, labels, ignore regions, captions and phrases, in the same order."""
    assert len(a) == len(b)
    assert a.vocabulary.names == b.vocabulary.names
    for x, y in zip(a.records, b.records):
        assert Path(x.image_path).resolve() == Path(y.image_path).resolve()
        assert (x.width, x.height, x.image_id) == (y.width, y.height, y.image_id)
        np.testing.assert_allclose(x.boxes, y.boxes, atol=atol)
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_allclose(x.ignore_boxes, y.ignore_boxes, atol=atol)
        np.testing.assert_array_equal(x.ignore_labels, y.ignore_labels)
        assert (x.caption, x.phrases, x.phrase_spans) == (y.caption, y.phrases, y.phrase_spans)
