"""Readers on the real shared datasets: exact counts from each SOURCE.txt, layouts, grounding files."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _data_builders import (load, one_box_coco_json, one_box_yolo_yaml, tiny_coco_images, tiny_coco_json,
                            write_grounding_json, write_odvg)

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers import detect_format, load_lvis_vocabulary, read_coco, read_dataset
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


def test_yolo_label_files_with_a_byte_order_mark_read_like_plain_ones(shared_data, tmp_path):
    yaml_path = _yolo_copy(shared_data, tmp_path, f"val: valid/images\nnames: {NAMES}\n", n=2)
    plain = read_dataset(yaml_path, split="val")
    for label in (tmp_path / "data/valid/labels").iterdir():
        text = label.read_text()
        label.unlink()
        label.write_text("\ufeff" + text, encoding="utf-8")  # as Windows editors save them
    marked = read_dataset(yaml_path, split="val")
    assert [r.labels.tolist() for r in marked.records] == [r.labels.tolist() for r in plain.records]
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(marked.records, plain.records))


def test_unknown_coco_category_kept_with_label_minus_one(shared_data, tmp_path):
    data = load(tiny_coco_json(shared_data))
    data["annotations"][0]["category_id"] = 999
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    dataset = read_dataset(path, image_root=tiny_coco_images(shared_data))
    assert dataset.num_boxes + sum(len(r.ignore_boxes) for r in dataset.records) == 382
    assert (np.concatenate([r.labels for r in dataset.records]) == -1).sum() == 1


@pytest.mark.parametrize("grounding", [False, True])
def test_duplicate_coco_image_ids_refused(tmp_path, grounding):
    """Two images sharing id 1 would each get both boxes; the reader must say so, not mix them."""
    path = one_box_coco_json(tmp_path, [1, 1, 3], grounding)
    with pytest.raises(DatasetFormatError, match=r"id 1: img0\.png, img1\.png") as error:
        read_dataset(path)
    assert error.value.code == "duplicate_image_id" and str(path) in str(error.value)
    assert "give every image its own id" in str(error.value)


@pytest.mark.parametrize("bad_id", ["img1", "1", None, True, 1.5])
def test_non_integer_coco_image_ids_refused(tmp_path, bad_id):
    path = one_box_coco_json(tmp_path, [bad_id, 2])
    with pytest.raises(DatasetFormatError, match=r"images\[0\] \('img0\.png'\) has id") as error:
        read_dataset(path)
    assert error.value.code == "invalid_image_id" and str(path) in str(error.value)
    assert "must be integers" in str(error.value)


def test_whole_float_coco_image_ids_still_read(tmp_path):
    dataset = read_dataset(one_box_coco_json(tmp_path, [1.0, 2]))
    assert [r.image_id for r in dataset.records] == [1, 2] and dataset.num_boxes == 2


@pytest.mark.parametrize("names, shown", [
    ("[yes, no]", "True (bool)"), ("[on, 'off']", "True (bool)"), ("[1, 2]", "1 (int)"),
    ("{0: red, 1: 1.50}", "1.5 (float)"), ("['red', ~]", "None (NoneType)")])
def test_yolo_non_string_names_refused(tmp_path, names, shown):
    """YAML reads yes/no as booleans and 1 as a number: the prompts would be 'True', '1'."""
    yaml_path = one_box_yolo_yaml(tmp_path, names)
    with pytest.raises(DatasetFormatError, match="not a string") as error:
        read_dataset(yaml_path, split="train")
    assert error.value.code == "non_string_class_name"
    assert str(yaml_path) in str(error.value) and shown in str(error.value) and "quote" in str(error.value)


def test_yolo_quoted_names_read_as_written(tmp_path):
    dataset = read_dataset(one_box_yolo_yaml(tmp_path, "['yes', 'no', '1']"), split="train")
    assert dataset.vocabulary.names == ("yes", "no", "1")


def test_coco_areas_reach_the_harness_ground_truth_so_size_ranges_match_the_file(shared_data, tmp_path):
    # COCO sorts objects into small / medium / large by the annotation's `area` (the mask's),
    # not the box's; the harness scores against the ground truth rebuilt from records
    from cl_detect.data.pack import pack_record
    from cl_detect.eval.coco_eval import evaluate_coco
    from cl_detect.eval.detector_eval import ground_truth
    gt_path = tiny_coco_json(shared_data)
    original = load(gt_path)
    dataset = read_dataset(gt_path)
    rebuilt, vocabulary = ground_truth(dataset)
    by_id = {a["id"]: a for a in original["annotations"]}
    box_area = [a["bbox"][2] * a["bbox"][3] for a in original["annotations"]]
    assert sum(abs(a - b["area"]) > 1 for a, b in zip(box_area, original["annotations"])) > 100  # they differ
    assert sorted(a["area"] for a in rebuilt["annotations"]) == pytest.approx(sorted(by_id[i]["area"] for i in by_id))
    rng = np.random.default_rng(0)
    names = {c["id"]: c["name"] for c in original["categories"]}
    theirs, ours = [], {}
    for annotation in original["annotations"]:
        x, y, w, h = (np.array(annotation["bbox"]) + rng.normal(0, 2, 4)).tolist()
        score = float(rng.random())
        theirs.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                       "bbox": [x, y, w, h], "score": score})
        row = ours.setdefault(annotation["image_id"], {"image_id": annotation["image_id"], "boxes": [], "scores": [],
                                                         "labels": []})
        row["boxes"].append([x, y, x + w, y + h])
        row["scores"].append(score)
        row["labels"].append(vocabulary.names.index(names[annotation["category_id"]]))
    reference = evaluate_coco(gt_path, theirs)
    harness = evaluate_coco(rebuilt, list(ours.values()), vocabulary=vocabulary)
    for key in ("AP", "APs", "APm", "APl", "ARs", "ARm", "ARl"):
        assert harness[key] == pytest.approx(reference[key], abs=1e-12), key
    record = next(r for r in dataset.records if len(r.boxes))
    packed = pack_record(record, tmp_path / "small.jpg", max_side=max(record.width, record.height) // 2, quality=90)
    scale = packed.width / record.width * packed.height / record.height
    np.testing.assert_allclose(packed.areas, record.areas * scale)


def test_one_coco_file_is_not_written_for_detection_and_grounding_records_together(tmp_path):
    from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
    from cl_detect.data.writers import write_coco_json
    detection = DetectionRecord("/img/a.jpg", 10, 10, [[0, 0, 5, 5]], [0], image_id=1)
    grounding = DetectionRecord("/img/b.jpg", 10, 10, [[1, 1, 6, 6]], [0], image_id=2, phrases=("a dog",),
                                caption="a dog", phrase_spans=(((0, 5),),))
    mixed = DetectionDataset([detection, grounding], Vocabulary(("cat",)), source="mixed.jsonl")
    with pytest.raises(DatasetFormatError, match="mixed.jsonl: 1 grounding and 1 detection records"):
        write_coco_json(mixed, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_lvis_folder_skips_the_synset_map_beside_the_annotations(shared_data, caplog):
    """lvis_val_100/data holds coco_to_synset.json (no 'images') beside the LVIS file."""
    folder = shared_data / "lvis_val_100"
    assert detect_format(folder) == "lvis"
    dataset = read_dataset(folder)
    assert (len(dataset), dataset.num_boxes) == (100, 977)
    assert "coco_to_synset.json" in caplog.text


def test_json_without_images_is_named(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"cat": 1}))
    with pytest.raises(DatasetFormatError, match=r"classes\.json: json has no 'images' list"):
        read_dataset(tmp_path / "classes.json")
    with pytest.raises(DatasetFormatError, match=r"classes\.json: json has no 'images' list"):
        read_dataset(tmp_path / "classes.json", format="coco")  # forcing the format does not read it as empty
    with pytest.raises(DatasetFormatError, match=rf"{tmp_path}: none of its jsons \(classes\.json\)"):
        read_dataset(tmp_path)
    one_box_coco_json(tmp_path, [1, 2])
    for dataset in (read_dataset(tmp_path), read_coco(tmp_path)):
        assert len(dataset) == 2 and dataset.num_boxes == 2


def test_a_folder_split_decides_the_format_by_its_own_file(shared_data, tmp_path):
    # a folder with a COCO file and an LVIS file: asking for the LVIS split reads it as LVIS
    coco = load(tiny_coco_json(shared_data))
    lvis = {**coco, "images": [{**image, "neg_category_ids": [], "not_exhaustive_category_ids": []}
                               for image in coco["images"]],
            "categories": [{**c, "frequency": "f", "synonyms": [c["name"]]} for c in coco["categories"]]}
    (tmp_path / "instances_a.json").write_text(json.dumps(coco))
    (tmp_path / "instances_b.json").write_text(json.dumps(lvis))
    assert detect_format(tmp_path, "a") == "coco" and detect_format(tmp_path, "b") == "lvis"


@pytest.mark.parametrize("in_folder", [False, True])
def test_guessing_the_format_parses_each_json_once(shared_data, tmp_path, monkeypatch, in_folder):
    import cl_detect.data.readers as readers
    import cl_detect.data.readers.coco as coco_reader

    path = tmp_path / "instances_a.json"
    path.write_text(json.dumps(load(tiny_coco_json(shared_data))))
    parsed = Counter()

    def counting_load(name):
        parsed[Path(name).name] += 1
        return json.loads(Path(name).read_text())

    monkeypatch.setattr(readers, "load_json", counting_load)
    monkeypatch.setattr(coco_reader, "load_json", counting_load)
    dataset = read_dataset(tmp_path if in_folder else path)
    assert len(dataset) > 0 and parsed == {"instances_a.json": 1}
