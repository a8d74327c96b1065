"""Readers on datasets as tools export them: YOLO .txt splits and subfolders, broken yamls, malformed
COCO fields, Roboflow COCO folders and placeholder classes, VOC spellings, grounding files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data_builders import load, one_box_coco_json, one_box_yolo_yaml
from PIL import Image

from cl_detect.data.doctor import check_dataset
from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers import read_dataset


def _yolo_images(tmp_path: Path, relative_images: list[str]) -> None:
    """32x32 images at the given paths under tmp_path, each with one box of class 0 in its labels file."""
    import cv2

    for relative in relative_images:
        image = tmp_path / relative
        label = (tmp_path / relative.replace("images/", "labels/", 1)).with_suffix(".txt")
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
        label.write_text("0 0.5 0.5 0.25 0.25\n")


def test_yolo_split_as_a_txt_list_of_images_reads_their_labels(tmp_path):
    """Ultralytics `train: train.txt`: labels sit in images -> labels of each listed path (not beside the list)."""
    _yolo_images(tmp_path, ["images/train/a.jpg", "images/train/b.jpg", "images/train/c.jpg"])
    (tmp_path / "train.txt").write_text("./images/train/a.jpg\n./images/train/b.jpg\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: train.txt\nnames: [cat]\n")
    dataset = read_dataset(tmp_path / "data.yaml", split="train")
    assert len(dataset) == 2 and dataset.num_boxes == 2
    assert dataset.records[0].boxes.tolist() == [[12.0, 12.0, 20.0, 20.0]]
    assert Path(dataset.image_root) == tmp_path  # the list's folder, which written file_names are relative to
    report = check_dataset(tmp_path / "data.yaml", split="train")
    assert report.ok and "orphan_label_file" not in report.codes  # c.jpg's labels belong to an unlisted image


def test_yolo_images_in_subfolders_are_read(tmp_path):
    import cv2

    _yolo_images(tmp_path, ["images/train/a.jpg", "images/train/site1/b.JPG", "images/train/site2/deep/c.png"])
    (tmp_path / "images/train/unlabelled").mkdir()  # no labels folder: images without boxes, as Ultralytics
    cv2.imwrite(str(tmp_path / "images/train/unlabelled/d.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [cat]\n")
    dataset = read_dataset(tmp_path / "data.yaml", split="train")
    assert [Path(r.image_path).name for r in dataset.records] == ["a.jpg", "b.JPG", "c.png", "d.jpg"]
    assert [len(r.boxes) for r in dataset.records] == [1, 1, 1, 0]
    assert check_dataset(tmp_path / "data.yaml", split="train").ok


@pytest.mark.parametrize("written", ["1", " 1 ", "\n    1\n  ", "true", "True"])
def test_voc_difficult_flag_read_when_padded_or_written_as_true(tmp_path, written):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>"
        f"<object><name>cat</name><difficult>{written}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>")
    record = read_dataset(tmp_path, format="voc").records[0]
    assert len(record.boxes) == 0 and record.ignore_boxes.tolist() == [[1.0, 2.0, 20.0, 30.0]]


@pytest.mark.parametrize("written", ["b", " b.png "])
def test_voc_filename_without_its_extension_or_padded_finds_the_image(tmp_path, written):
    # <filename>b</filename> was looked for as "b" and reported missing
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "b.png")
    (tmp_path / "annotations/b.xml").write_text(
        f"<annotation><filename>{written}</filename><size><width>64</width><height>48</height></size>"
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox>"
        "</object></annotation>")
    record = read_dataset(tmp_path, format="voc").records[0]
    assert record.image_path == str(tmp_path / "images" / "b.png") and len(record.boxes) == 1


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["annotations"][0].update(bbox=[4, 4, None, 20]), r"annotation id 1 \(image 1\) has bbox \[4, 4, None"),
    (lambda d: d["annotations"][0].update(bbox=["a", 4, 20, 20]), r"annotation id 1 \(image 1\) has bbox \['a'"),
    (lambda d: d["annotations"][0].update(bbox="4420"), r"annotation id 1 \(image 1\) has bbox '4420'"),
    (lambda d: d["images"][0].pop("file_name"), r"image id 1 has file_name None"),
    (lambda d: d["images"][0].update(width="64px"), r"image id 1 \('img0\.png'\) has width '64px'"),
    (lambda d: d["categories"][0].pop("id"), r"categories\[0\] is \{'name': 'red box'\}"),
    (lambda d: d["categories"][0].pop("name"), r"categories\[0\] is \{'id': 1\}"),
    # matched no category, so the doctor called the box's class missing
    (lambda d: d["annotations"][0].update(category_id="1"), r"annotation 1 has category_id '1', a string"),
])
def test_malformed_coco_fields_name_the_file_and_record(tmp_path, edit, named):
    """A field of the wrong type is a DatasetFormatError naming the record (the doctor reports it), not a
    TypeError / KeyError from deep inside the reader."""
    path = one_box_coco_json(tmp_path, [1, 2])
    data = load(path)
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=named) as error:
        read_dataset(path)
    assert str(path) in str(error.value)
    assert check_dataset(path).codes == {"unreadable_dataset"}


def test_coco_null_lists_and_sizes_read_as_absent(tmp_path):
    import cv2

    path = one_box_coco_json(tmp_path, [1, 2])
    cv2.imwrite(str(tmp_path / "img0.png"), np.zeros((48, 64, 3), np.uint8))
    data = load(path)
    data["images"][0].update(width=None, height=None, neg_category_ids=None)
    path.write_text(json.dumps(data))
    record = read_dataset(path).records[0]
    assert (record.width, record.height) == (64, 48) and record.neg_category_ids == ()
    data["annotations"] = None
    path.write_text(json.dumps(data))
    assert read_dataset(path).num_boxes == 0


def test_yolo_folder_named_by_two_splits_is_read_once(tmp_path):
    _yolo_images(tmp_path, ["images/train/a.jpg", "images/train/b.jpg"])
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [cat]\n")  # as coco128.yaml
    dataset = read_dataset(tmp_path / "data.yaml")
    assert len(dataset) == 2 and "repeated_image" not in check_dataset(tmp_path / "data.yaml").codes


@pytest.mark.parametrize("text, named", [
    ("train: train/images\nnames:\n\t- cat\n", "not valid YAML"),  # a tab indent
    ("", "holds nothing, not a mapping"),
    ("- cat\n- dog\n", "holds the list"),
    ("train: train/images\nnames: {a: cat}\n", r"'names' keys \['a'\] are not all class indices"),
    ("train: train/images\nnc: two\nnames: [cat]\n", "nc is two but 'names' lists 1 classes"),
])
def test_broken_yolo_yaml_names_the_file(tmp_path, text, named):
    """Not a TypeError / ScannerError from deep inside: a DatasetFormatError the doctor reports."""
    yaml_path = one_box_yolo_yaml(tmp_path, "[cat]")
    yaml_path.write_text(text)
    with pytest.raises(DatasetFormatError, match=named) as error:
        read_dataset(yaml_path, split="train")
    assert str(yaml_path) in str(error.value)
    assert not check_dataset(yaml_path, split="train").ok


def test_roboflow_coco_export_folder_by_split_and_merged(tmp_path):
    """Roboflow writes <split>/_annotations.coco.json, each split numbering its images from 0."""
    for split in ("train", "valid"):
        (tmp_path / split).mkdir()
        one_box_coco_json(tmp_path / split, [0, 1]).rename(tmp_path / split / "_annotations.coco.json")
    valid = read_dataset(tmp_path, split="valid")
    assert len(valid) == 2 and valid.source.endswith("valid/_annotations.coco.json")
    assert [r.image_id for r in valid.records] == [0, 1]  # one split keeps its ids
    merged = read_dataset(tmp_path)
    assert len(merged) == 4 and [r.image_id for r in merged.records] == [1, 2, 3, 4]  # evaluation needs distinct ids


def test_roboflow_placeholder_category_is_named(tmp_path, caplog):
    data = load(one_box_coco_json(tmp_path, [1, 2]))
    name = data["categories"][0]["name"]
    data["categories"] = [{"id": 0, "name": "shapes-x1", "supercategory": "none"}] + [
        {**c, "supercategory": "shapes-x1"} for c in data["categories"]]
    path = tmp_path / "roboflow.json"
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="cl_detect.data.readers.coco"):
        dataset = read_dataset(path)
    assert dataset.vocabulary.names[:2] == ("shapes-x1", name)  # kept (never dropped silently), but named
    assert "'shapes-x1' (id 0) looks like Roboflow's placeholder" in caplog.text
    caplog.clear()
    data["annotations"][0]["category_id"] = 0  # a class with boxes is a real one
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="cl_detect.data.readers.coco"):
        read_dataset(path)
    assert "placeholder" not in caplog.text


def test_a_grounding_json_whose_first_image_has_no_caption_is_read_as_grounding(tmp_path):
    data = load(one_box_coco_json(tmp_path, [1, 2], grounding=True))
    del data["images"][0]["caption"]  # its box's span then points past an empty caption: the doctor says so
    path = tmp_path / "grounding.json"
    path.write_text(json.dumps(data))
    dataset = read_dataset(path)
    assert all(record.is_grounding for record in dataset.records)
    assert dataset.records[1].phrases == ("red box",)
