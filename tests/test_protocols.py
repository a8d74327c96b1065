"""Protocol files and `RunConfig`: merging, variables, validation, dataset loading rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cl_detect.bench.config import load_run_config, merge_shallow
from cl_detect.bench.experiment import method_runs, with_overrides
from cl_detect.bench.protocol import merge_by_name, subset
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


def _dataset(names, labels_per_image, files):
    records = [DetectionRecord(f"/img/{f}", 10, 10, np.zeros((len(lab), 4)), lab, image_id=i + 7)
               for i, (lab, f) in enumerate(zip(labels_per_image, files))]
    return DetectionDataset(records, Vocabulary(tuple(names)), source="x")


def test_merge_by_name_relabels_drops_duplicate_images_and_renumbers():
    first = _dataset(["cat", "dog"], [[0], [1]], ["a.jpg", "b.jpg"])
    second = _dataset(["dog", "cat"], [[0, 1], [0]], ["b.jpg", "c.jpg"])
    merged = merge_by_name([first, second], "retention")
    assert [Path(r.image_path).name for r in merged.records] == ["a.jpg", "b.jpg", "c.jpg"]
    assert merged.records[2].labels.tolist() == [1]  # "dog" is label 1 in the first vocabulary
    assert [r.image_id for r in merged.records] == [1, 2, 3]
    with pytest.raises(ValueError, match="different class names"):
        merge_by_name([first, _dataset(["cat", "bird"], [[0]], ["d.jpg"])], "retention")


def test_subset_is_a_fixed_draw_in_original_order():
    dataset = _dataset(["cat"], [[0]] * 20, [f"{i}.jpg" for i in range(20)])
    picked = [r.image_id for r in subset(dataset, 5).records]
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert picked == [r.image_id for r in subset(dataset, 5).records]
    assert subset(dataset, None) is dataset
