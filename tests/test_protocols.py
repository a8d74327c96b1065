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
from cl_detect.bench.protocol import load_protocol_data, merge_by_name
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.selection import subset

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
    # COCO's instances_val2017.json names bare files that live in val2017/; GLIP's layouts for these two
    assert ivlod.retention[0].data[0].image_root == "/data/coco_root/val2017"
    pistols = next(t for t in ivlod.tasks if t.name == "Pistols")
    assert (pistols.train.path, pistols.test.path) == ("pistols/export/train_annotations_without_background.json",
                                                       "pistols/export/val_annotations_without_background.json")
    assert next(t for t in ivlod.tasks if t.name == "EgoHands").test.path.startswith("EgoHands/generic/mini_val/")
    assert ivlod.retention[1].prompts == "/data/lvis_root/lvis_v1_class_texts.json"  # YOLO-World's LVIS prompts


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


def test_settings_that_would_fail_only_at_run_time_are_errors_when_read(tmp_path):
    # each of these loaded without complaint and failed (or ran other seeds) after data and model loading
    task = MINIMAL["tasks"][0]
    cases = [({"eval": {"backend": "fastest"}}, "eval backend must be 'fast' or 'pycocotools'"),
             ({"seeds": "12"}, r"seeds must be a list of integers.*got '12'"),
             ({"train": {"device": "gpu"}}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
             ({"tasks": [{"name": "t", "train": "a.json"}]}, "lacks test: each task is"),
             ({"tasks": [{**task, "promts": ["a"]}]}, r"unknown key\(s\) of task 't': \['promts'\]"),
             ({"tasks": [{**task, "train": {"path": "a.json", "fromat": "coco"}}]},
              r"unknown dataset key\(s\) of 'a.json': \['fromat'\]; valid: .*'format'"),
             ({"retention": [{"name": "r", "dat": "c.json"}]}, "retention set .* lacks data")]
    for extra, message in cases:
        with pytest.raises(ValueError, match=rf"p\.yaml: .*{message}"):
            load_run_config(_write(tmp_path, {**MINIMAL, **extra}))



def test_misshapen_settings_are_one_message_naming_the_file(tmp_path):
    # these crashed with AttributeError / TypeError tracebacks, failed only when a run started, or
    # wrote results outside OUT/<name>/ (a name with '/', '..' or an empty name)
    cases = [({"method_options": ["finetune"]}, "method_options must be a mapping"),
             ({"train": None}, r"train must be a mapping .*leave it out to keep the defaults"),
             ({"base_model": "m.pt"}, "base_model must be a mapping"),
             ({"base_model": None}, r"base_model must be a mapping .*give base_model: \{checkpoint: PATH\}"),
             ({"base_model": {"checkpont": "m.pt"}},
              r"unknown base_model key\(s\) \['checkpont'\]; valid: .*checkpoint"),
             ({"base_model": {"checkpoint": None}}, "'checkpoint' .* must be str, got None"),
             ({"name": "a/b"}, "protocol name 'a/b' names the results folder"),
             ({"name": ".."}, "protocol name '..' names the results folder"),
             ({"methods": "finetune"}, "methods must be a list of method lists.*got 'finetune'"),
             ({"methods": ["finetun"]}, r"methods: unknown method\(s\) \['finetun'\]"),
             ({"methods": ["lora+lora"]}, r"method list 'lora\+lora': a method is listed twice"),
             ({"methods": ["lora+prompt"]}, "method list 'lora\\+prompt': lora and prompt each decide"),
             # clashes that depend on the options or the order were found only when each run built its model
             ({"methods": ["ewc+lora"], "method_options": {"lora": {"merge_after_task": True}}},
              "method list 'ewc\\+lora': ewc cannot be combined with lora's merge_after_task"),
             ({"methods": ["distill+specialist"], "method_options": {"distill": {"teacher": "previous_task"}}},
              "method list 'distill\\+specialist': distill with teacher 'previous_task' listed before specialist"),
             ({"synthetic_world": {"seeed": 0}},
              r"unknown synthetic_world setting\(s\) \['seeed'\]; valid: .*'seed'"),
             ({"synthetic_world": [0]}, "synthetic_world must be a mapping"),
             ({"retention": [{"name": "r", "data": []}]}, "retention set 'r': data is empty"),
             # a negative grad_clip flips every gradient (clip_grad_norm_), a negative lr climbs the loss
             ({"train": {"grad_clip": -1.0, "lr": -1e-3}}, r"out of range: lr = -0.001 .*grad_clip = -1.0"),
             ({"train": {"log_every": 0}}, r"out of range: log_every = 0 \(at least 1\)"),
             ({"base_model": {"checkpoint": "m.pt", "pretrain": {"detecter": "x"}}},
              r"unknown base_model pretrain setting\(s\)"),
             # ranges were checked only when pretraining started, minutes into `cl-detect run`
             ({"base_model": {"checkpoint": "m.pt", "pretrain": {"lr": -1.0}}},
              r"base_model pretrain: train setting\(s\) out of range: lr = -1.0"),
             ({"base_model": {"checkpoint": "m.pt", "pretrain": {"close_mosaic_epochs": 13}}},
              "base_model pretrain: close_mosaic_epochs must be between 0 and epochs")]
    for extra, message in cases:
        with pytest.raises(ValueError, match=rf"p\.yaml: .*{message}"):
            load_run_config(_write(tmp_path, {**MINIMAL, **extra}))


def test_override_files_merge_in_order_and_their_errors_name_them(tmp_path):
    head, lr = tmp_path / "head.yaml", tmp_path / "lr.yaml"
    head.write_text("method_options: {finetune: {parts: head}}\ntrain: {epochs: 3}\n")
    lr.write_text("train: {lr: 0.5}\nseeds: [4]\n")
    config = load_run_config(_write(tmp_path, {**MINIMAL, "train": {"epochs": 1, "batch_size": 2}}),
                             defaults_path=None, override_files=[head, lr])
    assert config.train == {"epochs": 3, "batch_size": 2, "lr": 0.5} and config.seeds == [4]
    assert config.method_options == {"finetune": {"parts": "head"}}
    (tmp_path / "list.yaml").write_text("- finetune\n")
    with pytest.raises(ValueError, match="list.yaml: an override file holds one mapping"):
        load_run_config(_write(tmp_path, MINIMAL), override_files=[tmp_path / "list.yaml"])
    (tmp_path / "typo.yaml").write_text("trian: {epochs: 1}\n")
    with pytest.raises(ValueError, match=r"unknown protocol key\(s\) in .*typo.yaml: \['trian'\]"):
        load_run_config(_write(tmp_path, MINIMAL), override_files=[tmp_path / "typo.yaml"])
    (tmp_path / "nested.yaml").write_text("train: {epochz: 1}\n")
    with pytest.raises(ValueError, match=r"p.yaml \(with .*nested.yaml\): unknown train setting"):
        load_run_config(_write(tmp_path, MINIMAL), override_files=[tmp_path / "nested.yaml"])


def test_compositions_that_cannot_work_fail_before_any_run(tmp_path):
    config = load_run_config(_write(tmp_path, MINIMAL), defaults_path=None)
    with pytest.raises(ValueError, match="method list 'lora\\+prompt': lora and prompt each decide"):
        method_runs(["finetune", "lora+prompt"], config)
    with pytest.raises(ValueError, match="a method is listed twice: .*compose distinct methods"):
        method_runs(["lora+distill+lora"], config)
    assert method_runs(["distill+replay", "mix"], config) == [["distill", "replay"], ["mix"]]


def test_eval_compile_without_a_cpp_compiler_stops_before_any_data_is_read(tmp_path, monkeypatch):
    # every run failed at its first evaluation, deep in torch._dynamo, after the base model had loaded
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    from cl_detect.bench.experiment import run_experiment

    def no_compiler():
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    config = load_run_config(_write(tmp_path, {**MINIMAL, "eval": {"compile": True}, "train": {"device": "cpu"}}),
                             defaults_path=None)
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler.*eval.compile"):
        run_experiment(config, ["finetune"], None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cuda_device_the_machine_lacks_stops_before_any_data_is_read(tmp_path, monkeypatch):
    # it stopped every run deep inside torch ("Found no NVIDIA driver"), a traceback, after loading
    from cl_detect.bench.experiment import run_experiment

    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    config = load_run_config(_write(tmp_path, {**MINIMAL, "train": {"device": "cuda"}}), defaults_path=None)
    with pytest.raises(ValueError, match=r"train.device is 'cuda', but this machine has 0 CUDA device\(s\); use 'cpu'"):
        run_experiment(config, ["finetune"], None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_label_is_not_given_to_other_methods(tmp_path):
    # `--override baselines/head_only.yaml --methods zeroshot` wrote a zero-shot run as finetune-head
    from cl_detect.bench.experiment import run_experiment

    config = load_run_config(_write(tmp_path, {**MINIMAL, "label": "finetune-head", "methods": ["finetune"]}),
                             defaults_path=None)
    with pytest.raises(ValueError, match=r"label 'finetune-head' names the run of methods \['finetune'\]"):
        run_experiment(config, ["zeroshot"], None, tmp_path / "out")


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
    # a method option called image_size follows --image-size also when the protocol leaves it at its default
    bare = with_overrides(load_run_config(_write(tmp_path, MINIMAL), defaults_path=None), image_size=320)
    assert bare.method_options["ewc"]["image_size"] == 320


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
        load_run_config(_write(tmp_path, {**MINIMAL, "tasks": [task]}))
    if isinstance(prompts, str) or prompts == ["box", "Box"]:
        return  # a retention set may name a prompt file and repeat a prompt (see the class-texts test)
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
    without = {**task, "test": {"path": "test", "format": "voc"}}  # its own label order: prompts go by name
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [without]}))
    test = load_protocol_data(config).tasks[0].test
    assert test.vocabulary.names == ("a fox",) and test.records[0].labels.tolist() == [0]  # raccoon's prompt
    (tmp_path / "c.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    coco = {**task, "test": {"path": "c.json", "class_names": ["fox", "raccoon"]}}
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [coco]}))
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
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
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
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t test: path 'tset.json' does not exist .*joined to data_root"):
        load_protocol_data(config)
    task = {"name": "t", "train": {"path": "train.json", "image_list": "list.txt"}, "test": "train.json"}
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t train: image_list 'list.txt' does not exist"):
        load_protocol_data(config)


def test_a_test_box_outside_the_class_list_stops_the_protocol_at_load(tmp_path):
    # it used to fail every run at its base evaluation, deep in the COCO writer
    _coco_classes(tmp_path / "train.json", ["fox"])
    data = json.loads((tmp_path / "train.json").read_text())
    data["annotations"].append({**data["annotations"][0], "id": 2, "category_id": 7})
    (tmp_path / "test.json").write_text(json.dumps(data))
    task = {"name": "t", "train": "train.json", "test": "test.json"}
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"task t test set: 1 box\(es\) of .* outside its 1 classes, e.g. .*0.jpg.* has label -1"):
        load_protocol_data(config)
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [{**task, "test": "train.json"}],
              "retention": [{"name": "r", "data": "test.json"}]}
    with pytest.raises(ValueError, match=r"retention set r: .*outside its 1 classes"):
        load_protocol_data(load_run_config(_write(tmp_path, config)))


def test_a_grounding_test_set_is_refused_not_scored_zero(tmp_path):
    # no class list, so no prompts: every stage scored AP 0.0 without a word
    _coco_classes(tmp_path / "train.json", ["fox"])
    (tmp_path / "caption.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "0.jpg", "width": 40, "height": 40, "caption": "a fox."}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                         "iscrowd": 0, "tokens_positive": [[2, 5]]}],
        "categories": [{"id": 1, "name": "object"}]}))
    task = {"name": "t", "train": "train.json", "test": {"path": "caption.json", "format": "grounding"}}
    config = load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task]}))
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
        load_protocol_data(load_run_config(_write(tmp_path, config)))


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
    assert err.startswith(f"error: {path}: protocol 'p' method_options: unknown method 'lroa'")
    assert "Traceback" not in err
    monkeypatch.setenv("CL_DETECT_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown method 'lroa'"):
        console_main()


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
        load_protocol_data(load_run_config(_write(tmp_path, config)))
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [{**task, "test": "empty.json"}]}
    with pytest.raises(ValueError, match="task t test set: .*empty.json has no ground-truth box"):
        load_protocol_data(load_run_config(_write(tmp_path, config)))
    config = {**MINIMAL, "data_root": str(tmp_path), "tasks": [task],
              "retention": [{"name": "r", "data": "boxes.json"}]}
    assert len(load_protocol_data(load_run_config(_write(tmp_path, config))).retention[0].dataset) == 1


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
        return load_run_config(_write(tmp_path, {**MINIMAL, "data_root": str(tmp_path), "tasks": [task],
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


def test_negative_seeds_and_empty_image_caps_fail_at_load_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"seeds must be a list of integers \(0 or more\).*got \[-1\]"):
        load_run_config(_write(tmp_path, {**MINIMAL, "seeds": [-1]}))
    task = {"name": "t", "train": {"path": "a.json", "max_images": 0}, "test": "b.json"}
    with pytest.raises(ValueError, match=r"a.json: max_images must be 1 or more, got 0"):
        load_run_config(_write(tmp_path, {**MINIMAL, "tasks": [task]}))


def test_a_label_too_long_for_a_file_name_fails_when_the_protocol_is_read(tmp_path):
    # it used to fail after data and model loading, with "[Errno 36] File name too long"
    with pytest.raises(ValueError, match=r"protocol label 'x+'\.\.\. is 250 bytes long.*at most 200 bytes"):
        load_run_config(_write(tmp_path, {**MINIMAL, "label": "x" * 250}))
    task = {**MINIMAL["tasks"][0], "name": "t" * 230}
    with pytest.raises(ValueError, match=r"protocol task name 't+'\.\.\. is 230 bytes"):
        load_run_config(_write(tmp_path, {**MINIMAL, "tasks": [task]}))


def test_an_lvis_retention_set_may_be_subset(tmp_path):
    # LVIS evaluation scores a subset's own images (tests/test_eval_lvis.py), so max_images is allowed
    retention = [{"name": "lvis", "protocol": "lvis", "data": {"path": "lvis.json", "max_images": 50}}]
    config = load_run_config(_write(tmp_path, {**MINIMAL, "retention": retention}))
    assert config.retention[0].data[0].max_images == 50
