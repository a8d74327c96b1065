"""Readers on datasets as tools export them: YOLO .txt splits and subfolders, broken yamls, pose labels,
LabelImg / CVAT class lists without a yaml, malformed COCO / grounding / ODVG / VOC fields, Roboflow COCO
folders and placeholder classes, FiftyOne's layout, reader options, merged class lists."""
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
    (lambda d: d["images"][0].update(file_name=None), r"image id 1 has file_name None"),
    (lambda d: d["images"][0].update(file_name=7), r"image id 1 has file_name 7"),
    (lambda d: d["images"].__setitem__(0, "img0.png"), r"images\[0\] is 'img0.png', not an object"),
    (lambda d: d["annotations"].__setitem__(1, [4, 4, 20, 20]), r"annotations\[1\] is \[4, 4, 20, 20\], not an object"),
    # a string "0" is truthy: the box became an ignore region, silently
    (lambda d: d["annotations"][0].update(iscrowd="0"), r"annotation id 1 \(image 1\) has iscrowd '0'"),
    (lambda d: d["images"][0].update(width="64px"), r"image id 1 \('img0\.png'\) has width '64px'"),
    (lambda d: d["categories"][0].pop("id"), r"categories\[0\] is \{'name': 'red box'\}"),
    (lambda d: d["categories"][0].pop("name"), r"categories\[0\] is \{'id': 1\}"),
    # int() made 1.5 category 1 and parsed "2": ids of other classes
    (lambda d: d["categories"][0].update(id=1.5), r"categories\[0\] is \{'id': 1.5, 'name': 'red box'"),
    (lambda d: d["categories"][0].update(id="2"), r"categories\[0\] is \{'id': '2', 'name': 'red box'"),
    # matched no category, so the doctor called the box's class missing
    (lambda d: d["annotations"][0].update(category_id="1"), r"annotation 1 has category_id '1', a string"),
])
@pytest.mark.parametrize("grounding", [False, True])
def test_malformed_coco_fields_name_the_file_and_record(tmp_path, edit, named, grounding):
    """A field of the wrong type is a DatasetFormatError naming the record (the doctor reports it), not a
    TypeError / KeyError from deep inside the reader (the grounding reader shares the checks)."""
    if grounding and "categor" in named:
        pytest.skip("grounding files do not read categories: boxes name their phrase by span")
    path = one_box_coco_json(tmp_path, [1, 2], grounding=grounding)
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


def test_coco_integer_iscrowd_flags_still_read(tmp_path):
    data = load(one_box_coco_json(tmp_path, [1, 2]))
    data["annotations"][0]["iscrowd"], data["annotations"][1]["iscrowd"] = True, 0.0
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(data))
    first, second = read_dataset(path).records
    assert (len(first.boxes), len(first.ignore_boxes), len(second.boxes)) == (0, 1, 1)


@pytest.mark.parametrize("written, named", [
    ("<xmin>12px</xmin>", "object 'dog' has <xmin>12px</xmin>, not a number"),
    ("<width>640 px</width>", "<size> has <width>640 px</width>, not a number"),
    ("<width>nan</width>", "<size> has width nan and height 48.0; write them as whole numbers"),
])
def test_voc_values_that_are_not_numbers_name_the_xml(tmp_path, written, named):
    """Not a bare ValueError from float(): the xml and the object are named."""
    (tmp_path / "Annotations").mkdir()
    size = written if written.startswith("<width>") else "<width>64</width>"
    xmin = written if written.startswith("<xmin>") else "<xmin>1</xmin>"
    (tmp_path / "Annotations/a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size>{size}<height>48</height></size><object><name>dog</name>"
        f"<bndbox>{xmin}<ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>")
    with pytest.raises(DatasetFormatError, match=named) as error:
        read_dataset(tmp_path, format="voc")
    assert "a.xml" in str(error.value)


@pytest.mark.parametrize("change, named", [
    (lambda line: line["detection"]["instances"][0].pop("label"), "has label None"),
    (lambda line: line["detection"]["instances"][0].update(label="dog"), "has label 'dog'"),
    (lambda line: line["detection"]["instances"][0].update(bbox=[1, 2, 30]), r"has bbox \[1, 2, 30\]"),
    (lambda line: line.update(grounding={"caption": "a dog", "regions": [{"phrase": "dog"}]}), "has bbox None"),
    (lambda line: line.update(height="48px"), "width 64 and height '48px'"),
])
def test_malformed_odvg_lines_name_the_file_and_line(tmp_path, change, named):
    line = {"filename": "a.jpg", "width": 64, "height": 48,
            "detection": {"instances": [{"bbox": [1, 2, 30, 40], "label": 0, "category": "dog"}]}}
    change(line)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DatasetFormatError, match=f"train.jsonl:1 \\(a.jpg\\).*{named}"):
        read_dataset(path)


def test_odvg_null_fields_read_as_absent(tmp_path):
    """As in COCO files: a null size is read from the image, a null detection / caption is none."""
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    lines = [{"filename": "a.jpg", "width": None, "height": None, "detection": None},
             {"filename": "a.jpg", "grounding": {"caption": None, "regions": [{"bbox": [1, 2, 3, 4],
                                                                              "tokens_positive": [[0, 0]]}]}}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "[]\n")
    with pytest.raises(DatasetFormatError, match=r"train.jsonl:3: \[\] is not a json object"):
        read_dataset(path)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    detection, grounding = read_dataset(path).records
    assert (detection.width, detection.height, len(detection.boxes)) == (64, 48, 0)
    assert grounding.caption == "" and grounding.phrases == ("",)


def test_odvg_labels_written_as_digit_strings_still_read(tmp_path):
    line = {"filename": "a.jpg", "width": 64, "height": 48,
            "detection": {"instances": [{"bbox": [1, 2, 30, 40], "label": "3", "category": "dog"}]}}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(line) + "\n")
    dataset = read_dataset(path)
    assert dataset.vocabulary.category_ids == (3,) and dataset.records[0].labels.tolist() == [0]
    with pytest.raises(DatasetFormatError, match=r"label map keys \['dog'\] are not all integer labels"):
        read_dataset(path, label_map={"dog": 3})  # name -> label, the other way round


@pytest.mark.parametrize("line", ["1.7 0.5 0.5 0.2 0.2", "0.5 0.5 0.2 0.2 1"])
def test_yolo_class_that_is_not_a_whole_number_is_refused(tmp_path, line):
    """int('1.7') would be class 1, and a 'cx cy w h class' line class 0 with shifted boxes: both silently."""
    yaml_path = one_box_yolo_yaml(tmp_path, "[cat, dog]")
    (tmp_path / "train/labels/a.txt").write_text(line + "\n")
    with pytest.raises(DatasetFormatError, match=f"a.txt:1: '{line}' starts with"):
        read_dataset(yaml_path)
    (tmp_path / "train/labels/a.txt").write_text("1.0 0.5 0.5 0.2 0.2\n")
    assert read_dataset(yaml_path).records[0].labels.tolist() == [1]


def test_merging_keeps_labels_past_a_class_list_unknown_and_remaps_lvis_lists():
    """A YOLO class index >= nc stays in the record for the doctor; merged, it must not name another class
    (it crashed), and LVIS per-image category ids follow the union's renumbering."""
    from cl_detect.data.merge import merge_datasets
    from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

    boxes = [[0, 0, 5, 5], [1, 1, 4, 4]]
    yolo = DetectionDataset([DetectionRecord("/y/a.jpg", 10, 10, boxes, [0, 2])], Vocabulary(("dog", "bird")))
    lvis = DetectionDataset([DetectionRecord("/l/b.jpg", 10, 10, boxes, [0, 1], neg_category_ids=(7,),
                                             not_exhaustive_category_ids=(9, 4))],
                            Vocabulary(("owl", "Dog"), category_ids=(7, 9), frequency=("r", "f")))
    merged = merge_datasets([yolo, lvis], "both")
    assert merged.vocabulary.names == ("dog", "bird", "owl")
    assert [r.labels.tolist() for r in merged.records] == [[0, -1], [2, 0]]
    assert merged.records[1].neg_category_ids == (3,) and merged.records[1].not_exhaustive_category_ids == (1,)


def test_fiftyone_coco_export_finds_its_data_folder(tmp_path):
    """FiftyOne's COCODetectionDataset export: labels.json beside data/ holding the images."""
    import cv2

    path = one_box_coco_json(tmp_path, [1, 2]).rename(tmp_path / "labels.json")
    (tmp_path / "data").mkdir()
    for name in ("img0.png", "img1.png"):
        cv2.imwrite(str(tmp_path / "data" / name), np.zeros((64, 64, 3), np.uint8))
    dataset = read_dataset(tmp_path)
    assert Path(dataset.image_root) == tmp_path / "data"
    assert all(Path(record.image_path).is_file() for record in dataset.records)
    assert read_dataset(path).records[0].image_path == str(tmp_path / "data" / "img0.png")


@pytest.mark.parametrize("class_list", ["classes.txt", "obj.names"])
def test_yolo_labels_with_a_class_list_but_no_yaml_say_which_yaml_to_write(tmp_path, class_list):
    """LabelImg (classes.txt) and CVAT's YOLO 1.1 (obj.names) write no yaml: the message gave COCO advice."""
    _yolo_images(tmp_path, ["images/a.jpg"])
    (tmp_path / class_list).write_text("cat\ndog\n")
    for format in (None, "yolo"):
        with pytest.raises(DatasetFormatError, match=rf"class list in {class_list} .*'names: \['cat', 'dog'\]"):
            read_dataset(tmp_path, format=format)
    (tmp_path / "data.yaml").write_text("train: images\nnames: ['cat', 'dog']\n")  # the yaml it asks for
    assert read_dataset(tmp_path).num_boxes == 1


@pytest.mark.parametrize("option", [{"image_root": "."}, {"label_map": {"0": "cat"}}])
def test_reader_options_a_format_does_not_take_are_named(tmp_path, option):
    """A protocol or pretrain entry with image_root on YOLO data raised a TypeError naming no dataset,
    and a label_map on a COCO file was dropped silently."""
    yaml_path = one_box_yolo_yaml(tmp_path, "[cat]")
    with pytest.raises(DatasetFormatError, match=f"{list(option)[0]} does not apply to yolo data"):
        read_dataset(yaml_path, **option)
    if "label_map" in option:
        with pytest.raises(DatasetFormatError, match="label_map does not apply to coco data, which takes image_root"):
            read_dataset(one_box_coco_json(tmp_path, [1]), **option)
    assert len(read_dataset(yaml_path, image_root=None)) == 1  # an option left unset is fine


@pytest.mark.parametrize("kpt_shape, line", [
    ("[2, 2]", "0 0.5 0.5 0.25 0.5 0.45 0.4 0.55 0.6"),  # an odd count: it was read as a polygon
    ("[2, 3]", "0 0.5 0.5 0.25 0.5 0.45 0.4 2 0.55 0.6 2"),
])
def test_yolo_pose_lines_read_their_box_not_a_polygon(tmp_path, kpt_shape, line):
    """Ultralytics pose labels are 'class cx cy w h' + keypoints; the yaml's kpt_shape says so."""
    yaml_path = one_box_yolo_yaml(tmp_path, "[tiger]")
    yaml_path.write_text(f"train: train/images\nkpt_shape: {kpt_shape}\nnames: [tiger]\n")
    (tmp_path / "train/labels/a.txt").write_text(line + "\n")
    np.testing.assert_allclose(read_dataset(yaml_path).records[0].boxes, [[12, 8, 20, 24]])
    (tmp_path / "train/labels/a.txt").write_text("0 0.5 0.5 0.25 0.5\n")  # keypoints missing
    with pytest.raises(DatasetFormatError, match="a.txt:1: .* has 5 numbers; the yaml's kpt_shape"):
        read_dataset(yaml_path)
