"""Readers on the real shared datasets: exact counts from each SOURCE.txt, layouts, grounding files."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _data_builders import (load, tiny_coco_images, tiny_coco_json, write_grounding_json,
                            write_odvg)

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers import detect_format, load_lvis_vocabulary, read_dataset
from cl_detect.data.readers.yolo import orphan_label_files

AQUARIUM = "aquarium/dataset/aquarium_pretrain"
POTHOLE_YAML = "pothole/data/raw/data.yaml"
LVIS_VAL = "lvis_val_100/data/lvis_val_100.json"


@pytest.mark.parametrize("split, images, instances, used", [("train", 50, 470, 49), ("val", 50, 382, 48)])
def test_tiny_coco_counts_crowd_and_ids(shared_data, split, images, instances, used):
    dataset = read_dataset(shared_data / "tiny_coco", split=split)
    crowd = sum(len(r.ignore_boxes) for r in dataset.records)
    assert (len(dataset), dataset.num_boxes + crowd, crowd) == (images, instances, 5)
    assert len(dataset.vocabulary) == 80 and max(dataset.vocabulary.category_ids) == 90
    assert len({int(label) for r in dataset.records for label in r.labels}) == used
    assert all(Path(r.image_path).is_file() for r in dataset.records)
    raw = load(tiny_coco_json(shared_data, split))
    first = next(a for a in raw["annotations"] if not a["iscrowd"])
    record = next(r for r in dataset.records if r.image_id == first["image_id"])
    x, y, w, h = first["bbox"]
    assert np.any(np.all(np.abs(record.boxes - [x, y, x + w, y + h]) < 1e-3, axis=1))
    crowd_labels = [int(label) for r in dataset.records for label in r.ignore_labels]
    assert min(crowd_labels) >= 0  # crowd regions keep their class


def test_coco128_yolo_counts_and_orphan_labels(shared_data):
    dataset = read_dataset(shared_data / "coco128_yolo")
    assert detect_format(shared_data / "coco128_yolo") == "yolo"
    assert len(dataset) == 256 and len(dataset.vocabulary) == 80 and dataset.vocabulary.names[0] == "person"
    # SOURCE.txt's 1839 boxes count label lines; 2 label files have no image (and 2 images no labels)
    label_root = shared_data / "coco128_yolo/object_detection/labels"
    orphans = orphan_label_files([Path(r.image_path) for r in dataset.records], label_root / "train2017")
    orphan_boxes = sum(len(p.read_text().split("\n")) - 1 for p in orphans)
    assert len(orphans) == 2
    assert dataset.num_boxes + orphan_boxes == 1839
    assert sum(len(r.boxes) == 0 for r in dataset.records) == 2


@pytest.mark.parametrize("split, images, boxes", [("train", 448, 3324), ("valid", 127, 909), ("test", 63, 584)])
def test_aquarium_roboflow_layout(shared_data, split, images, boxes):
    dataset = read_dataset(shared_data / AQUARIUM, split=split)
    assert (len(dataset), dataset.num_boxes) == (images, boxes)
    assert dataset.vocabulary.names == ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray")
    assert all(f"/{split}/images/" in r.image_path for r in dataset.records)
    if split == "train":
        assert sum(len(r.boxes) == 0 for r in dataset.records) == 1  # the one empty label file


def test_yolo_boxes_are_pixel_xyxy(shared_data):
    dataset = read_dataset(shared_data / AQUARIUM, split="test")
    record = dataset.records[0]
    label_file = Path(record.image_path.replace("/images/", "/labels/")).with_suffix(".txt")
    cls, cx, cy, w, h = (float(v) for v in label_file.read_text().split()[:5])
    expected = [(cx - w / 2) * record.width, (cy - h / 2) * record.height,
                (cx + w / 2) * record.width, (cy + h / 2) * record.height]
    np.testing.assert_allclose(record.boxes[0], expected, atol=1e-3)
    assert record.labels[0] == int(cls)


@pytest.mark.parametrize("split, images, boxes", [("train", 465, 1256), ("val", 133, 330), ("test", 67, 154)])
def test_pothole_absolute_paths_rewritten(shared_data, split, images, boxes):
    assert "/mnt/data" in (shared_data / POTHOLE_YAML).read_text()
    dataset = read_dataset(shared_data / POTHOLE_YAML, split=split)
    assert (len(dataset), dataset.num_boxes, dataset.vocabulary.names) == (images, boxes, ("pothole",))
    root = (shared_data / "pothole/data/raw").resolve()  # shared/ may be a symbolic link
    assert all(Path(r.image_path).resolve().is_relative_to(root) for r in dataset.records)


def test_raccoon_voc_without_imagesets(shared_data):
    dataset = read_dataset(shared_data / "raccoon")
    assert detect_format(shared_data / "raccoon") == "voc"
    assert (len(dataset), dataset.num_boxes, dataset.vocabulary.names) == (200, 217, ("raccoon",))
    assert all(Path(r.image_path).is_file() for r in dataset.records)
    with pytest.raises(DatasetFormatError, match="ImageSets"):
        read_dataset(shared_data / "raccoon", split="train")


def test_voc_imagesets_split(shared_data, tmp_path):
    raccoon = shared_data / "raccoon"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / folder).mkdir(parents=True)
    for n in (1, 2, 3):
        (tmp_path / "Annotations" / f"raccoon-{n}.xml").symlink_to(raccoon / "annotations" / f"raccoon-{n}.xml")
        (tmp_path / "JPEGImages" / f"raccoon-{n}.jpg").symlink_to(raccoon / "images" / f"raccoon-{n}.jpg")
    (tmp_path / "ImageSets/Main/train.txt").write_text("raccoon-1\nraccoon-3\n")
    dataset = read_dataset(tmp_path, split="train")
    assert [Path(r.image_path).name for r in dataset.records] == ["raccoon-1.jpg", "raccoon-3.jpg"]
    assert all("JPEGImages" in r.image_path for r in dataset.records)
    assert len(read_dataset(tmp_path)) == 3


def test_lvis_val_100_keeps_federated_fields(shared_data):
    dataset = read_dataset(shared_data / LVIS_VAL)
    assert detect_format(shared_data / LVIS_VAL) == "lvis"
    assert (len(dataset), dataset.num_boxes, len(dataset.vocabulary)) == (100, 977, 1230)
    assert Counter(dataset.vocabulary.frequency) == {"f": 315, "c": 461, "r": 454}
    raw = {image["id"]: image for image in load(shared_data / LVIS_VAL)["images"]}
    for record in dataset.records:
        assert list(record.neg_category_ids) == raw[record.image_id]["neg_category_ids"]
        assert list(record.not_exhaustive_category_ids) == raw[record.image_id]["not_exhaustive_category_ids"]
    assert any(r.not_exhaustive_category_ids for r in dataset.records)
    assert dataset.records[0].image_path.endswith("val2017/000000266409.jpg")  # named by coco_url


def test_lvis_v1_meta_vocabulary(shared_data):
    vocabulary = load_lvis_vocabulary(shared_data / "lvis_v1_meta/datasets/metadata/lvis_v1_train_cat_info.json")
    assert len(vocabulary) == 1203 and vocabulary.category_ids == tuple(range(1, 1204))
    assert Counter(vocabulary.frequency) == {"r": 337, "c": 461, "f": 405}
    assert vocabulary.names[0] == "aerosol_can" and vocabulary.synonyms[0] == ("spray_can",)
    assert load_lvis_vocabulary().names == vocabulary.names  # default path: the shared folder


def test_grounding_json_from_tiny_coco_captions(shared_data, tmp_path):
    path = write_grounding_json(shared_data, tmp_path / "goldg_style.json")
    grounding = read_dataset(path, image_root=tiny_coco_images(shared_data))
    detection = read_dataset(tiny_coco_json(shared_data))
    assert detect_format(path) == "grounding" and len(grounding.vocabulary) == 0
    assert len(grounding) == 50 and grounding.num_boxes == 377
    for g, d in zip(grounding.records, detection.records):
        np.testing.assert_allclose(g.boxes, d.boxes, atol=1e-3)
        assert len(g.ignore_boxes) == len(d.ignore_boxes)
        # every phrase is the category name its spans point at, and labels agree with the detection labels
        assert [g.phrases[label] for label in g.labels] == [detection.vocabulary.names[label] for label in d.labels]
        for phrase, spans in zip(g.phrases, g.phrase_spans):
            assert g.caption[spans[0][0]:spans[0][1]] == phrase


@pytest.mark.parametrize("grounding", [False, True])
def test_odvg_matches_coco(shared_data, tmp_path, grounding):
    path = write_odvg(shared_data, tmp_path / "val.odvg.jsonl", grounding)
    odvg = read_dataset(path, image_root=tiny_coco_images(shared_data))
    coco = read_dataset(tiny_coco_json(shared_data))
    assert detect_format(path) == "odvg" and (len(odvg), odvg.num_boxes) == (50, 377)
    for o, c in zip(odvg.records, coco.records):
        np.testing.assert_allclose(o.boxes, c.boxes, atol=1e-3)
        assert Path(o.image_path).resolve() == Path(c.image_path).resolve()
        names = [o.phrases[label] for label in o.labels] if grounding else [odvg.vocabulary.names[i] for i in o.labels]
        assert names == [coco.vocabulary.names[label] for label in c.labels]
    if grounding:
        grounding_json = read_dataset(write_grounding_json(shared_data, tmp_path / "g.json"),
                                      image_root=tiny_coco_images(shared_data))
        for o, g in zip(odvg.records, grounding_json.records):
            assert (o.caption, o.phrases, o.phrase_spans) == (g.caption, g.phrases, g.phrase_spans)


def _yolo_copy(shared_data: Path, tmp_path: Path, config: str, n: int = 3) -> Path:
    """A YOLO dataset of n aquarium images (symlinked) with the given yaml text."""
    source = shared_data / AQUARIUM / "valid"
    for sub in ("images", "labels"):
        (tmp_path / "data/valid" / sub).mkdir(parents=True)
    for image in sorted((source / "images").iterdir())[:n]:
        (tmp_path / "data/valid/images" / image.name).symlink_to(image)
        label = source / "labels" / (image.stem + ".txt")
        (tmp_path / "data/valid/labels" / label.name).symlink_to(label)
    yaml_path = tmp_path / "data" / "data.yaml"
    yaml_path.write_text(config)
    return yaml_path


NAMES = "['fish', 'jellyfish', 'penguin', 'puffin', 'shark', 'starfish', 'stingray']"


@pytest.mark.parametrize("config", [
    f"path: .\nval: valid/images\nnames: {NAMES}\n",  # Ultralytics, path: key
    f"val: ../valid/images\nnc: 7\nnames: {NAMES}\n",  # Roboflow, one level up
    f"val: /somewhere/else/data/valid/images\nnames: {NAMES}\n",  # another machine's absolute path
    "val: valid/images\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(eval(NAMES))),  # dict names
])
def test_yolo_yaml_layouts(shared_data, tmp_path, config):
    dataset = read_dataset(_yolo_copy(shared_data, tmp_path, config), split="val")
    assert len(dataset) == 3 and len(dataset.vocabulary) == 7 and dataset.vocabulary.names[-1] == "stingray"
    assert dataset.num_boxes == sum(len(p.read_text().splitlines()) for p in (tmp_path / "data/valid/labels").iterdir())


def test_yolo_names_as_one_string_refused(shared_data, tmp_path):
    with pytest.raises(DatasetFormatError, match="letter by letter") as error:
        read_dataset(_yolo_copy(shared_data, tmp_path, "val: valid/images\nnames: head\n"), split="val")
    assert error.value.code == "names_as_string"


def test_yolo_bad_label_line_names_file_and_line(shared_data, tmp_path):
    yaml_path = _yolo_copy(shared_data, tmp_path, f"val: valid/images\nnames: {NAMES}\n", n=1)
    label = next((tmp_path / "data/valid/labels").iterdir())
    label.unlink()
    label.write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DatasetFormatError, match=f"{label.name}:1"):
        read_dataset(yaml_path, split="val")


def test_unknown_coco_category_kept_with_label_minus_one(shared_data, tmp_path):
    data = load(tiny_coco_json(shared_data))
    data["annotations"][0]["category_id"] = 999
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    dataset = read_dataset(path, image_root=tiny_coco_images(shared_data))
    assert dataset.num_boxes + sum(len(r.ignore_boxes) for r in dataset.records) == 382
    assert (np.concatenate([r.labels for r in dataset.records]) == -1).sum() == 1
