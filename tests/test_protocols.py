"""Protocol files and `RunConfig`: merging, variables, validation, dataset loading rules."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cl_detect.bench.config import load_run_config, merge_shallow
from cl_detect.bench.experiment import method_runs, with_overrides
from cl_detect.bench.protocol import load_protocol_data, merge_by_name, subset
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
IVLOD_ORDER = ["AerialMaritimeDrone", "Aquarium", "CottontailRabbits", "EgoHands", "NorthAmericaMushrooms",
               "Packages", "PascalVOC", "Pistols", "Pothole", "Raccoon", "ShellfishOpenImages",
               "ThermalDogsAndPeople", "VehiclesOpenImages"]


def test_merge_is_shallow_with_mappings_merged_one_level():
    defaults = {"train": {"epochs": 10, "lr": 1.0}, "seeds": [0], "tasks": [{"name": "a"}]}
    merged = merge_shallow(defaults, {"train": {"epochs": 2}, "seeds": [1, 2]})
    assert merged == {"train": {"epochs": 2, "lr": 1.0}, "seeds": [1, 2], "tasks": [{"name": "a"}]}


def test_shipped_protocols_resolve(monkeypatch):
    for name in ("ODINW_ROOT", "COCO_ROOT", "LVIS_ROOT", "YOLO_WORLD_CHECKPOINT"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")
    monkeypatch.setenv("CL_DETECT_SHARED", "/shared")
    synthetic = load_run_config(EXPERIMENTS / "synthetic.yaml")
    assert [t.name for t in synthetic.tasks] == ["task1", "task2"]
    assert [r.name for r in synthetic.retention] == ["base", "heldout"]
    assert synthetic.train_config().image_size == synthetic.eval.image_size == 96
    assert synthetic.method_options["replay"]["pretraining_data"] == "cache/synthetic_world/base/train.json"
    mini = load_run_config(EXPERIMENTS / "odinw-mini.yaml")
    assert [t.name for t in mini.tasks] == ["aquarium", "raccoon", "pothole"]
    assert mini.data_root == "/shared/data" and len(mini.retention[0].data) == 2
    ivlod = load_run_config(EXPERIMENTS / "ivlod-odinw13.yaml")
    assert [t.name for t in ivlod.tasks] == IVLOD_ORDER
    assert ivlod.base_model.checkpoint == "/data/yolo_world_checkpoint"
    assert [(r.name, r.protocol) for r in ivlod.retention] == [("coco", "coco"), ("lvis", "lvis-fixed")]
    assert str(ivlod.resolve_path(ivlod.tasks[0].train.path)).startswith("/data/odinw_root/AerialMaritimeDrone/")


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


MINIMAL = {"name": "p", "base_model": {"checkpoint": "m.pt"},
           "tasks": [{"name": "t", "train": "a.json", "test": "b.json"}]}


def test_unset_variable_unknown_key_and_bad_training_field_are_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        load_run_config(_write(tmp_path, {**MINIMAL, "data_root": "${NOT_SET_ANYWHERE}"}))
    with pytest.raises(ValueError, match="unknown protocol key"):
        load_run_config(_write(tmp_path, {**MINIMAL, "epochs": 3}))
    with pytest.raises(ValueError, match="unknown train setting"):
        load_run_config(_write(tmp_path, {**MINIMAL, "train": {"epochz": 3}}))
    with pytest.raises(ValueError, match=r"unknown eval setting\(s\) \['compiled'\]; valid: .*'compile'"):
        load_run_config(_write(tmp_path, {**MINIMAL, "eval": {"compiled": True}}))
    assert load_run_config(_write(tmp_path, {**MINIMAL, "eval": {"compile": True}})).eval.compile
    with pytest.raises(ValueError, match="eval image_size must be a positive multiple of 32.*got 500"):
        load_run_config(_write(tmp_path, {**MINIMAL, "eval": {"image_size": 500}}))
    with pytest.raises(ValueError, match="protocol must be one of"):
        load_run_config(_write(tmp_path, {**MINIMAL, "retention": [{"name": "r", "data": "c.json",
                                                                     "protocol": "voc"}]}))
    with pytest.raises(ValueError, match="unique"):
        load_run_config(_write(tmp_path, {**MINIMAL, "retention": [{"name": "t", "data": "c.json"}]}))


def test_method_lists_and_command_line_overrides(tmp_path):
    config = load_run_config(_write(tmp_path, {**MINIMAL, "method_options": {"ewc": {"image_size": 640}},
                                               "train": {"image_size": 640}}), defaults_path=None)
    assert method_runs(["finetune", "finetune+distill"], config) == [["finetune"], ["finetune", "distill"]]
    with pytest.raises(ValueError, match="unknown method"):
        method_runs(["finetune+nosuchmethod"], config)
    changed = with_overrides(config, image_size=320, max_train_images=5, device="cpu")
    assert changed.train["image_size"] == changed.eval.image_size == 320
    assert changed.method_options["ewc"]["image_size"] == 320 and changed.train["device"] == "cpu"
    assert changed.tasks[0].train.max_images == 5 and changed.tasks[0].test.max_images is None
    assert config.train["image_size"] == 640  # the original is untouched


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
        load_run_config(_write(tmp_path, {**MINIMAL, "tasks": [task]}))
    retention = [{"name": "r", "data": "c.json", "prompts": prompts}]
    with pytest.raises(ValueError, match=r"retention set 'r'.*" + message):
        load_run_config(_write(tmp_path, {**MINIMAL, "retention": retention}))


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
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    data = load_protocol_data(config)
    train, test = data.tasks[0].train, data.tasks[0].test
    assert train.vocabulary.names == test.vocabulary.names == ("a raccoon", "a fox")
    assert test.records[0].labels.tolist() == [1]  # raccoon: label 1 in both splits
    without = {**task, "test": {"path": "test", "format": "voc"}}
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [without]}))
    with pytest.raises(ValueError, match="2 prompts for 1 classes"):
        load_protocol_data(config)
    (tmp_path / "c.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    coco = {**task, "test": {"path": "c.json", "class_names": ["fox", "raccoon"]}}
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [coco]}))
    with pytest.raises(ValueError, match="class_names applies to VOC data only; coco files store their own"):
        load_protocol_data(config)


def test_exponent_numbers_are_numbers_and_typos_or_wrong_types_fail_at_load(tmp_path):
    text = yaml.safe_dump({**MINIMAL, "train": {"lr": 0.5}, "method_options": {"ewc": {"strength": 2.0}}})
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("0.5", "1e-3").replace("2.0", "1e3"))  # as people write them
    config = load_run_config(path)
    assert config.train_config().lr == 0.001 and config.method_options["ewc"]["strength"] == 1000.0
    with pytest.raises(ValueError, match=r"method_options: unknown method 'lroa'; registered: .*lora"):
        load_run_config(_write(tmp_path, {**MINIMAL, "method_options": {"lroa": {"rank": 2}}}))
    with pytest.raises(ValueError, match=r"'rank' \(option\(s\) for method 'lora'\) must be int, got True"):
        load_run_config(_write(tmp_path, {**MINIMAL, "method_options": {"lora": {"rank": True}}}))
    with pytest.raises(ValueError, match=r"'amp' \(train setting\(s\)\) must be bool, got 'yes please'"):
        load_run_config(_write(tmp_path, {**MINIMAL, "train": {"amp": "yes please"}}))
    with pytest.raises(ValueError, match=r"'epochs' \(train setting\(s\)\) must be int, got 2.5"):
        load_run_config(_write(tmp_path, {**MINIMAL, "train": {"epochs": 2.5}}))


def test_the_cl_detect_script_prints_input_errors_as_one_message(tmp_path, monkeypatch, capsys):
    from cl_detect.cli import console_main
    path = _write(tmp_path, {**MINIMAL, "method_options": {"lroa": {"rank": 2}}})
    monkeypatch.setattr(sys, "argv", ["cl-detect", "run", str(path)])
    monkeypatch.delenv("CL_DETECT_DEBUG", raising=False)
    assert console_main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: protocol 'p' method_options: unknown method 'lroa'") and "Traceback" not in err
    monkeypatch.setenv("CL_DETECT_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown method 'lroa'"):
        console_main()
