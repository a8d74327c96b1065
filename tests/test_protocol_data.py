"""Protocol data: reading each task's and retention set's datasets, prompts by name, merging
sources, subsets, and the evaluation sets refused at load."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cl_detect.bench.config import load_run_config
from cl_detect.bench.protocol import load_protocol_data, merge_by_name
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.selection import subset

from _protocol_files import MINIMAL, write_protocol


def _dataset(names, labels_per_image, files, folder=Path("/img")):
    records = [DetectionRecord(str(folder / f), 10, 10, np.zeros((len(lab), 4)), lab, image_id=i + 7)
               for i, (lab, f) in enumerate(zip(labels_per_image, files))]
    return DetectionDataset(records, Vocabulary(tuple(names)), source="x")


def _photo(seed: int, height: int = 60, width: int = 90) -> np.ndarray:
    """A smooth random picture (photo-like: resizing it keeps it recognisable)."""
    small = np.random.default_rng(seed).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def test_merge_by_name_relabels_keeps_one_copy_of_a_repeated_picture_and_renumbers(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    for name, seed in (("a.jpg", 0), ("b.jpg", 1), ("d.jpg", 2)):
        cv2.imwrite(str(one / name), _photo(seed))
    cv2.imwrite(str(two / "b.jpg"), _photo(1, 40, 60))  # the same picture stored smaller, re-encoded
    cv2.imwrite(str(two / "c.jpg"), _photo(3))
    cv2.imwrite(str(two / "d.jpg"), _photo(4))  # another picture under a taken name
    first = _dataset(["cat", "dog"], [[0], [1], [0]], ["a.jpg", "b.jpg", "d.jpg"], one)
    second = _dataset(["dog", "cat"], [[0, 1], [0], [1]], ["b.jpg", "c.jpg", "d.jpg"], two)
    merged = merge_by_name([first, second], "retention")
    assert [Path(r.image_path).relative_to(tmp_path).as_posix() for r in merged.records] == [
        "one/a.jpg", "one/b.jpg", "one/d.jpg", "two/c.jpg", "two/d.jpg"]
    assert merged.records[3].labels.tolist() == [1]  # "dog" is label 1 in the first vocabulary
    assert [r.image_id for r in merged.records] == [1, 2, 3, 4, 5]
    assert "1 image(s) found in more than one source were kept once" in capsys.readouterr().err
    with pytest.raises(ValueError, match="different class names"):
        merge_by_name([first, _dataset(["cat", "bird"], [[0]], ["e.jpg"], one)], "retention")


def test_a_landscape_and_a_portrait_photo_of_like_colours_are_not_one_picture(tmp_path):
    from cl_detect.bench.protocol import same_picture

    def horizon(height, width, seed):  # sky over sea: the same 32 x 32 thumbnail at any aspect ratio
        image = np.zeros((height, width, 3), np.uint8)
        image[: height // 2], image[height // 2:] = (200, 160, 120), (120, 80, 30)
        noise = np.random.default_rng(seed).normal(0, 6, image.shape)
        return np.clip(image + noise, 0, 255).astype(np.uint8)

    for name, (height, width, seed) in {"land.jpg": (480, 640, 0), "portrait.jpg": (640, 480, 1),
                                        "small.jpg": (321, 427, 0)}.items():
        cv2.imwrite(str(tmp_path / name), horizon(height, width, seed))
    assert not same_picture(str(tmp_path / "land.jpg"), str(tmp_path / "portrait.jpg"))
    assert same_picture(str(tmp_path / "land.jpg"), str(tmp_path / "small.jpg"))  # a resized copy still is


def test_subset_is_a_fixed_draw_in_original_order():
    dataset = _dataset(["cat"], [[0]] * 20, [f"{i}.jpg" for i in range(20)])
    picked = [r.image_id for r in subset(dataset, 5).records]
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert picked == [r.image_id for r in subset(dataset, 5).records]
    assert subset(dataset, None) is dataset


@pytest.mark.parametrize("prompts, message", [
    ("red box, blue box", r"single string 'red box, blue box'; give a list.*\['red box', 'blue box'\]"),
    ([True, "blue box"], r"entry 0 is True \(bool\), not a string.*quote"),
    ([["red box", "crimson box"], "blue box"], r"entry 0 is \['red box', 'crimson box'\] \(list\)"),
    (["box", "Box"], "class name 'box' appears 2 times"),
    (["", "blue box"], "class 0 has an empty name"),
])
def test_task_and_retention_prompts_must_be_distinct_strings(tmp_path, prompts, message):
    task = {**MINIMAL["tasks"][0], "prompts": prompts}
    with pytest.raises(ValueError, match=r"task 't'.*" + message):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "tasks": [task]}))
    if isinstance(prompts, str) or prompts == ["box", "Box"]:
        return  # a retention set may name a prompt file and repeat a prompt (see the class-texts test)
    retention = [{"name": "r", "data": "c.json", "prompts": prompts}]
    with pytest.raises(ValueError, match=r"retention set 'r'.*" + message):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "retention": retention}))


def _voc_split(root: Path, names: list[str]) -> None:
    """A VOC folder of xml files (one per image) whose objects are `names`."""
    root.mkdir(parents=True)
    for index, name in enumerate(names):
        cv2.imwrite(str(root / f"{index}.jpg"), np.full((40, 40, 3), 90, np.uint8))
        (root / f"{index}.xml").write_text(
            f"<annotation><filename>{index}.jpg</filename><size><width>40</width><height>40</height></size>"
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
            f"<xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")


def test_class_names_give_voc_splits_one_label_order(tmp_path):
    _voc_split(tmp_path / "train", ["raccoon", "fox"])
    _voc_split(tmp_path / "test", ["raccoon"])  # no fox here: alone it reads as one class
    task = {"name": "t", "prompts": ["a raccoon", "a fox"],
            "train": {"path": "train", "format": "voc", "class_names": ["fox", "raccoon"]},
            "test": {"path": "test", "format": "voc", "class_names": ["fox", "raccoon"]}}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    data = load_protocol_data(config)
    train, test = data.tasks[0].train, data.tasks[0].test
    assert train.vocabulary.names == test.vocabulary.names == ("a raccoon", "a fox")
    assert test.records[0].labels.tolist() == [1]  # raccoon: label 1 in both splits
    without = {**task, "test": {"path": "test", "format": "voc"}}  # its own label order: prompts go by name
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [without]}))
    test = load_protocol_data(config).tasks[0].test
    assert test.vocabulary.names == ("a fox",) and test.records[0].labels.tolist() == [0]  # raccoon's prompt
    (tmp_path / "c.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    coco = {**task, "test": {"path": "c.json", "class_names": ["fox", "raccoon"]}}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [coco]}))
    with pytest.raises(ValueError, match="class_names applies to VOC data only; coco files store their own"):
        load_protocol_data(config)


def _coco_classes(path: Path, names: list[str]) -> None:
    """A one-image COCO file whose categories are `names` (ids 1..K in that order), one box of the first."""
    cv2.imwrite(str(path.parent / "0.jpg"), np.full((40, 40, 3), 90, np.uint8))
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "0.jpg", "width": 40, "height": 40}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20],
                                                 "area": 400, "iscrowd": 0}],
                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))


def test_task_prompts_reach_the_test_classes_by_name_not_by_position(tmp_path):
    # the test file lists the classes in another order: positionally, 'fox' was scored as "a raccoon"
    _coco_classes(tmp_path / "train.json", ["raccoon", "fox"])
    _coco_classes(tmp_path / "test.json", ["fox", "raccoon"])
    task = {"name": "t", "train": "train.json", "test": "test.json", "prompts": ["a raccoon", "a fox"]}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    test = load_protocol_data(config).tasks[0].test
    assert test.vocabulary.names == ("a fox", "a raccoon")
    _coco_classes(tmp_path / "test.json", ["fox", "badger"])  # same count, another class: an error, not a guess
    with pytest.raises(ValueError, match=r"t: test class\(es\) \['badger'\] are not among the training classes"):
        load_protocol_data(config)


def test_a_missing_data_path_names_the_entry_even_with_a_format(tmp_path):
    # with `format:` given the reader opened the path as is: "[Errno 2] No such file or directory"
    _coco_classes(tmp_path / "train.json", ["fox"])
    task = {"name": "t", "train": {"path": "train.json", "format": "coco"},
            "test": {"path": "tset.json", "format": "coco"}}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t test: path 'tset.json' does not exist .*joined to data_root"):
        load_protocol_data(config)
    task = {"name": "t", "train": {"path": "train.json", "image_list": "list.txt"}, "test": "train.json"}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t train: image_list 'list.txt' does not exist"):
        load_protocol_data(config)


def test_a_test_box_outside_the_class_list_stops_the_protocol_at_load(tmp_path):
    # it used to fail every run at its base evaluation, deep in the COCO writer
    _coco_classes(tmp_path / "train.json", ["fox"])
    data = json.loads((tmp_path / "train.json").read_text())
    data["annotations"].append({**data["annotations"][0], "id": 2, "category_id": 7})
    (tmp_path / "test.json").write_text(json.dumps(data))
    task = {"name": "t", "train": "train.json", "test": "test.json"}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t test set: 1 box\(es\) of .* outside its 1 classes, e.g. .*0.jpg.* has label -1"):
        load_protocol_data(config)
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [{**task, "test": "train.json"}],
              "retention": [{"name": "r", "data": "test.json"}]}
    with pytest.raises(ValueError, match=r"retention set r: .*outside its 1 classes"):
        load_protocol_data(load_run_config(write_protocol(tmp_path, config)))


def test_a_grounding_test_set_is_refused_not_scored_zero(tmp_path):
    # no class list, so no prompts: every stage scored AP 0.0 without a word
    _coco_classes(tmp_path / "train.json", ["fox"])
    (tmp_path / "caption.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "0.jpg", "width": 40, "height": 40, "caption": "a fox."}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                         "iscrowd": 0, "tokens_positive": [[2, 5]]}],
        "categories": [{"id": 1, "name": "object"}]}))
    task = {"name": "t", "train": "train.json", "test": {"path": "caption.json", "format": "grounding"}}
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t test set: .*caption.json holds grounding records"):
        load_protocol_data(config)


def test_an_evaluation_set_with_missing_images_stops_the_protocol_at_load(tmp_path):
    # an LVIS json under the wrong image_root failed every run at its first evaluation
    _coco_classes(tmp_path / "train.json", ["fox"])
    data = json.loads((tmp_path / "train.json").read_text())
    data["images"][0]["file_name"] = "val2017/0.jpg"
    (tmp_path / "val.json").write_text(json.dumps(data))
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [{"name": "t", "train": "train.json", "test": "train.json"}],
              "retention": [{"name": "r", "data": {"path": "val.json", "image_root": "."}}]}
    with pytest.raises(ValueError, match=r"retention set r: 1 of the 1 images of .*val.json do not exist, e.g. "
                                         r".*val2017/0.jpg; point `image_root`"):
        load_protocol_data(load_run_config(write_protocol(tmp_path, config)))


def _coco_split(path: Path, with_boxes: bool) -> None:
    """A one-image COCO file with one 'fox' box, or with no annotation at all."""
    cv2.imwrite(str(path.parent / "0.jpg"), np.full((40, 40, 3), 90, np.uint8))
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                    "iscrowd": 0}] if with_boxes else []
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "0.jpg", "width": 40, "height": 40}],
                                "annotations": annotations, "categories": [{"id": 1, "name": "fox"}]}))


def test_an_evaluation_set_without_ground_truth_is_refused_not_scored_minus_one(tmp_path):
    # pycocotools gives AP -1 on a set without ground truth; read as an AP it made R = -1 / -1 = 100%
    _coco_split(tmp_path / "boxes.json", with_boxes=True)
    _coco_split(tmp_path / "empty.json", with_boxes=False)
    task = {"name": "t", "train": "boxes.json", "test": "boxes.json"}
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [task],
              "retention": [{"name": "negatives", "data": "empty.json"}]}
    with pytest.raises(ValueError, match="retention set negatives: .*empty.json has no ground-truth box"):
        load_protocol_data(load_run_config(write_protocol(tmp_path, config)))
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [{**task, "test": "empty.json"}]}
    with pytest.raises(ValueError, match="task t test set: .*empty.json has no ground-truth box"):
        load_protocol_data(load_run_config(write_protocol(tmp_path, config)))
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [task],
              "retention": [{"name": "r", "data": "boxes.json"}]}
    assert len(load_protocol_data(load_run_config(write_protocol(tmp_path, config))).retention[0].dataset) == 1


def test_a_retention_set_takes_its_prompts_from_a_class_texts_file(tmp_path):
    # YOLO-World evaluates LVIS with the first text of each class in lvis_v1_class_texts.json,
    # where two classes may share a prompt ("bow" the weapon and "bow" the ribbon)
    cv2.imwrite(str(tmp_path / "0.jpg"), np.full((40, 40, 3), 90, np.uint8))
    categories = [{"id": 1, "name": "bow_(weapon)"}, {"id": 2, "name": "bow_(decorative_ribbons)"}]
    annotations = [{"id": i, "image_id": 1, "category_id": i, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}
                   for i in (1, 2)]
    (tmp_path / "ret.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "0.jpg", "width": 40,
                                                               "height": 40}],
                                                   "annotations": annotations, "categories": categories}))
    _coco_split(tmp_path / "task.json", with_boxes=True)
    (tmp_path / "texts.json").write_text(json.dumps([["bow", "bow weapon"], ["bow", "bow decorative ribbons"]]))
    (tmp_path / "texts.txt").write_text("bow\nribbon\n")

    def protocol(prompts):
        retention = [{"name": "lvis", "data": "ret.json", "prompts": prompts}]
        task = {"name": "t", "train": "task.json", "test": "task.json"}
        return load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task],
                                                 "retention": retention}))

    assert load_protocol_data(protocol("texts.json")).retention[0].prompts == ["bow", "bow"]
    assert load_protocol_data(protocol(str(tmp_path / "texts.txt"))).retention[0].prompts == ["bow", "ribbon"]
    assert load_protocol_data(protocol(["bow", "bow"])).retention[0].prompts == ["bow", "bow"]  # not trained
    with pytest.raises(ValueError, match="prompts file 'missing.json' does not exist"):
        load_protocol_data(protocol("missing.json"))
    with pytest.raises(ValueError, match="prompts is the string 'bow, ribbon'; give a list.*or a prompt file"):
        protocol("bow, ribbon")
    (tmp_path / "texts.txt").write_text("bow\n")
    with pytest.raises(ValueError, match=r"1 prompts for the 2 classes of .*ret\.json"):
        load_protocol_data(protocol("texts.txt"))


