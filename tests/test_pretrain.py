"""`cl-detect pretrain` / `cl-detect finetune` end to end on a tiny world, and vocabulary merging."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cl_detect.cli import main
from cl_detect.data.errors import DatasetError
from cl_detect.data.readers.coco import records_from_coco
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.sampling import MixedDataset
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.pretrain import finetune, load_config, merge_vocabularies, training_set
from cl_detect.models.checkpoint import load_model, read_model_file

from _tiny_training import tiny_world

TRAIN = dict(epochs=1, batch_size=4, image_size=64, num_texts=8, device="cpu", amp=False, log_every=1,
             close_mosaic_epochs=1, warmup_epochs=0.5)


def _config(world, tmp_path, **changes) -> dict:
    # check_images off: the doctor's image check is covered in test_doctor; here the labels,
    # boxes and vocabulary checks are what must run before training
    config = {
        "detector": "yolo_world_v2_t", "text_encoder": "minilm",
        "datasets": [{"path": str(world / "base" / "train.json"), "format": "coco", "check_images": False}],
        "test_sets": [{"name": "base", "path": str(world / "base" / "test.json"), "check_images": False},
                      {"name": "heldout", "path": str(world / "heldout" / "test.json"), "check_images": False}],
        "train": TRAIN, "output": str(tmp_path / "model.pt"), "out_dir": str(tmp_path / "run"),
    }
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    world = tiny_world(root)
    path = root / "pretrain.yaml"
    path.write_text(yaml.safe_dump(_config(world, root)))
    assert main(["pretrain", str(path)]) == 0
    return world, root


def test_pretrain_writes_a_loadable_checkpoint_with_meta_and_metrics(pretrained):
    world, root = pretrained
    meta = read_model_file(root / "model.pt")["meta"]
    assert meta["command"] == "cl-detect pretrain" and meta["machine"] and meta["date"][:2] == "20"
    assert set(meta["final_metrics"]) == {"base", "heldout"}
    assert 0.0 <= meta["final_metrics"]["base"]["AP"] <= 1.0
    assert meta["train_steps"] == 4 and meta["transfer"] is None
    assert json.loads((root / "run" / "metrics.json").read_text())["final_metrics"] == meta["final_metrics"]
    detector, text_encoder = load_model(root / "model.pt")
    assert detector.config.text_dim == text_encoder.dim == 384


def test_finetune_starts_from_the_checkpoint_and_trains_only_the_chosen_parts(pretrained, tmp_path, capsys):
    world, root = pretrained
    # no detector named: the checkpoint's own architecture (yolo_world_v2_t), not the default S
    config = _config(world, tmp_path, detector=None, text_encoder=None, init_checkpoint=str(root / "model.pt"),
                     methods={"finetune": {"parts": "head"}}, test_sets=[])
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["finetune", str(path)]) == 0
    start = read_model_file(root / "model.pt")
    total = len(start["detector"])
    assert f"transferred {total}/{total} tensors" in capsys.readouterr().out
    tuned = read_model_file(tmp_path / "model.pt")
    assert tuned["meta"]["command"] == "cl-detect finetune" and tuned["text_encoder_spec"] == "minilm"
    params = {n for n, _ in load_model(tmp_path / "model.pt")[0].named_parameters()}
    changed = {n for n in params if not torch.equal(start["detector"][n], tuned["detector"][n])}
    assert changed and all(n.startswith("head.") for n in changed)


def test_finetune_with_lora_writes_the_merged_detector(pretrained, tmp_path):
    world, root = pretrained
    config = _config(world, tmp_path, text_encoder=None, init_checkpoint=str(root / "model.pt"),
                     methods={"lora": {"rank": 2}}, test_sets=[])
    finetune(config)
    start, tuned = read_model_file(root / "model.pt"), read_model_file(tmp_path / "model.pt")
    assert tuned["detector"].keys() == start["detector"].keys()  # no adapter tensors: the plain layout
    detector, _ = load_model(tmp_path / "model.pt")
    changed = [n for n, _ in detector.named_parameters() if not torch.equal(start["detector"][n], tuned["detector"][n])]
    assert changed and all(n.endswith("weight") for n in changed)  # adapters folded into the weights
    for name, kept in [("prompt", "class embeddings"), ("reparam", "a rebuilt class head"),
                       ("specialist", "closed-set classifiers")]:
        with pytest.raises(ValueError, match=rf"method '{name}' keeps what it learns \({kept}\) outside.*cl-detect run"):
            load_config(_config(world, tmp_path, methods={name: {}}))


def test_finetune_needs_a_checkpoint_and_one_dataset(tmp_path):
    world = tiny_world(tmp_path)
    with pytest.raises(ValueError, match=r"detector_kwargs \{'use_bn_head': False\} need a detector name"):
        load_config(_config(world, tmp_path, detector=None, detector_kwargs={"use_bn_head": False},
                            init_checkpoint="model.pt"))
    # without a checkpoint the architecture is the default one, which the arguments modify
    assert load_config(_config(world, tmp_path, detector=None, detector_kwargs={"use_bn_head": False})).detector is None
    with pytest.raises(ValueError, match="needs init_checkpoint"):
        finetune(_config(world, tmp_path))
    two = [{"path": str(world / "base" / "train.json")}] * 2
    with pytest.raises(ValueError, match="exactly one dataset"):
        finetune(_config(world, tmp_path, init_checkpoint="x.pt", datasets=two))


def test_dataset_entries_take_an_image_list_and_max_images_as_protocol_entries_do(tmp_path):
    # Raccoon's split is a csv of file names: a protocol could read it, `cl-detect finetune` refused the key
    from cl_detect.engine._pretrain_run import _run_settings
    from cl_detect.engine.pretrain import read_checked

    world = tiny_world(tmp_path)
    data = json.loads((world / "base" / "train.json").read_text())
    listed = [image["file_name"] for image in data["images"][1:4]]
    (tmp_path / "list.csv").write_text("filename,class\n" + "".join(f"{name},x\n" for name in listed))
    entry = {"path": str(world / "base" / "train.json"), "format": "coco", "check_images": False,
             "image_list": str(tmp_path / "list.csv")}
    config = load_config(_config(world, tmp_path, datasets=[entry]))
    dataset = read_checked(config.datasets[0], allow_data_errors=False)
    assert sorted(Path(r.image_path).name for r in dataset.records) == sorted(Path(name).name for name in listed)
    assert _run_settings(config)["datasets"][0]["image_list"] == str(tmp_path / "list.csv")
    assert "max_images" not in _run_settings(config)["datasets"][0]  # unset: a record from before matches
    capped = load_config(_config(world, tmp_path, datasets=[{**entry, "max_images": 2}])).datasets[0]
    assert len(read_checked(capped, allow_data_errors=False)) == 2
    with pytest.raises(ValueError, match="image_list '.*nothing.csv' does not exist"):
        load_config(_config(world, tmp_path, datasets=[{**entry, "image_list": str(tmp_path / "nothing.csv")}]))
    (tmp_path / "other.txt").write_text("elsewhere.png\n")
    other = load_config(_config(world, tmp_path, datasets=[{**entry, "image_list": str(tmp_path / "other.txt")}]))
    with pytest.raises(ValueError, match="other.txt: none of its images are in .*train.json"):
        read_checked(other.datasets[0], allow_data_errors=False)


def test_an_init_checkpoint_of_a_timm_pretrained_backbone_is_built_without_downloading(tmp_path, monkeypatch):
    # the stored config keeps pretrained_backbone=True: the detector fetched timm's weights (offline: an
    # error) only for transfer_weights to overwrite them with the checkpoint's
    from cl_detect.engine.pretrain import build_model

    from _timm_checkpoint import timm_pretrained_checkpoint

    world = tiny_world(tmp_path)
    weights = tmp_path / "start.pt"
    start = timm_pretrained_checkpoint(weights, monkeypatch)
    model, _, _ = build_model(load_config(_config(world, tmp_path, detector=None, text_encoder=None,
                                                  init_checkpoint=str(weights))))
    assert all(torch.equal(model.detector.state_dict()[name], value) for name, value in start.state_dict().items())


def test_doctor_errors_refuse_training_unless_allowed(tmp_path):
    world = tiny_world(tmp_path)
    data = json.loads((world / "base" / "train.json").read_text())
    data["categories"][1]["name"] = data["categories"][0]["name"]  # duplicate_class_name is an error
    broken = world / "base" / "broken.json"
    broken.write_text(json.dumps(data))
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(_config(world, tmp_path, datasets=[{"path": str(broken), "check_images": False}],
                                              test_sets=[])))
    with pytest.raises(DatasetError, match="duplicate_class_name"):
        main(["pretrain", str(path)])
    assert not (tmp_path / "model.pt").exists()
    assert main(["pretrain", str(path), "--allow-data-errors"]) == 0
    assert (tmp_path / "model.pt").is_file()


def test_allowed_data_errors_drop_boxes_of_unknown_classes_and_say_so(tmp_path, capsys):
    from cl_detect.data.checked import checked_dataset
    world = tiny_world(tmp_path)
    data = json.loads((world / "base" / "train.json").read_text())
    data["annotations"][0]["category_id"] = 999  # no such category: read as label -1
    dataset = records_from_coco(data, world / "base" / "train.json")
    with pytest.raises(DatasetError, match="label_out_of_range"):
        checked_dataset(dataset, allow_errors=False, where="base", check_images=False)
    kept = checked_dataset(dataset, allow_errors=True, where="base", check_images=False)
    assert kept.num_boxes == dataset.num_boxes - 1
    assert all((r.labels >= 0).all() for r in kept.records)
    assert "going on without 1 box(es) whose class is not in the vocabulary" in capsys.readouterr().err


def test_config_rejects_unknown_keys_and_settings(tmp_path):
    world = tiny_world(tmp_path)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['epochs'\]"):
        load_config(_config(world, tmp_path, epochs=3))
    with pytest.raises(ValueError, match=r"unknown train setting\(s\) \['lr_mult'\]"):
        load_config(_config(world, tmp_path, train={"lr_mult": 2}))
    with pytest.raises(ValueError, match="negatives must be"):
        load_config(_config(world, tmp_path, negatives="all"))
    with pytest.raises(ValueError, match="eval_image_size must be a positive multiple of 32.*got 100"):
        load_config(_config(world, tmp_path, eval_image_size=100))  # before training, not after it
    voc_names = [{"path": str(world / "base" / "train.json"), "class_names": "fox, raccoon"}]
    with pytest.raises(ValueError, match=r"class_names is the single string 'fox, raccoon'; give a list"):
        load_config(_config(world, tmp_path, datasets=voc_names))


def _dataset(names, labels, phrases=None) -> DetectionDataset:
    record = DetectionRecord("x.png", 64, 64, boxes=np.ones((len(labels), 4)) * [0, 0, 9, 9], labels=labels,
                             phrases=phrases)
    return DetectionDataset([record], Vocabulary(tuple(names)), source="/".join(names))


def test_resuming_a_run_made_with_another_config_is_refused(pretrained, tmp_path):
    from cl_detect.engine.pretrain import pretrain

    world, root = pretrained  # a finished run in root / "run"
    other_data = [{"path": str(world / "heldout" / "test.json"), "format": "coco", "check_images": False}]
    # it returned the finished run's model, trained on the base set, with the heldout set in its meta
    with pytest.raises(ValueError, match=r"holds a run made with another config \(datasets .*heldout.*--no-resume"):
        pretrain(_config(world, root, datasets=other_data, output=str(tmp_path / "model.pt")))
    with pytest.raises(ValueError, match=r"another config \(methods \{'finetune': \{\}\} -> \{'lora': \{\}\}\)"):
        pretrain(_config(world, root, methods={"lora": {}}, output=str(tmp_path / "model.pt")))
    # what is only evaluated may change: the finished run comes back as it is
    assert pretrain(_config(world, root, test_sets=[], output=str(tmp_path / "model.pt"))) == tmp_path / "model.pt"
    assert read_model_file(tmp_path / "model.pt")["meta"]["train_steps"] == 4


def test_a_folder_another_process_trains_in_is_refused_before_its_run_record_is_written(pretrained, tmp_path):
    # the refused run used to overwrite the running one's pretrain_run.json first
    import fcntl

    from cl_detect.engine.pretrain import pretrain

    world, _ = pretrained
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".train.lock", "w") as held:  # what the other process holds while it trains
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="is in use: another training process"):
            pretrain(_config(world, tmp_path))
    assert not (tmp_path / "run" / "pretrain_run.json").exists()


def test_finetune_draws_the_data_that_mix_adds(pretrained, tmp_path):
    from _mixing_data import write_grounding_json

    world, root = pretrained
    mix = {"data": [{"path": str(write_grounding_json(tmp_path, num_images=8)), "ratio": 0.5}]}
    config = _config(world, tmp_path, detector=None, text_encoder=None, init_checkpoint=str(root / "model.pt"),
                     methods={"finetune": {}, "mix": mix}, test_sets=[])
    # 16 task images and as many mixed-in draws (ratio 0.5), batch 4; the mix data was left out (4 steps)
    assert read_model_file(finetune(config))["meta"]["train_steps"] == 8


def test_transfer_report_says_when_the_checkpoint_is_of_another_size():
    from cl_detect.engine.transfer import transfer_weights
    from cl_detect.models.registry import create_detector

    tiny = create_detector("yolo_world_v2_t", text_dim=32).state_dict()
    report = transfer_weights(create_detector("yolo_world_v2_s", text_dim=32), tiny, verbose=False)
    # 118 of 411 tensors match by name and shape (64 of them BatchNorm counters), 1% of the values
    assert len(report.transferred) > 100 and report.value_share < 0.02
    assert "; only 1.0% of the model's values came from the checkpoint: is it of another size" in report.summary()
    same = transfer_weights(create_detector("yolo_world_v2_t", text_dim=32), tiny, verbose=False)
    assert same.value_share == 1.0 and same.summary() == f"transferred {len(tiny)}/{len(tiny)} tensors"


def test_test_sets_are_read_before_training(tmp_path):
    from _mixing_data import write_grounding_json
    from cl_detect.engine.pretrain import pretrain

    world = tiny_world(tmp_path)
    typo = [{"path": str(tmp_path / "no_such_test.json")}]  # was found only after the whole training
    with pytest.raises(DatasetError, match="no_such_test.json does not exist"):
        pretrain(_config(world, tmp_path, test_sets=typo))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    grounding = [{"name": "captions", "path": str(write_grounding_json(tmp_path)), "check_images": False}]
    with pytest.raises(ValueError, match=r"test set 'captions' .*: 8 of its 8 images are grounding records"):
        pretrain(_config(world, tmp_path, test_sets=grounding))  # was scored as AP 0.0
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_official_checkpoint_brings_its_own_text_tower(tmp_path):
    from cl_detect import save_official_checkpoint
    from cl_detect.engine.pretrain import build_model
    from cl_detect.models.registry import create_detector
    from cl_detect.models.text_encoders import create_text_encoder

    torch.manual_seed(0)
    tower = create_text_encoder("clip")  # the official layout holds a CLIP ViT-B/32 text tower
    save_official_checkpoint(create_detector("yolo_world_v2_t", text_dim=512), tmp_path / "official.pth", tower)
    # text_encoder unset: "None = the init checkpoint's", which was refused for an official checkpoint
    config = _config(tiny_world(tmp_path), tmp_path, detector=None, text_encoder=None,
                     init_checkpoint=str(tmp_path / "official.pth"))
    model, spec, _ = build_model(load_config(config))
    assert spec == f"clip:ViT-B-32:{tmp_path / 'official.pth'}"
    with torch.no_grad():
        assert torch.equal(model.text_encoder(["a red ball", ""]), tower(["a red ball", ""]))


def test_union_merges_vocabularies_and_remaps_labels():
    first = _dataset(["cat", "dog"], [0, 1])
    second = _dataset(["Dog", "bird"], [1, 0, -1])  # -1: a class the reader could not resolve
    grounding = _dataset([], [0], phrases=("a red ball",))
    merged = merge_vocabularies([first, second, grounding])
    assert merged.vocabulary.names == ("cat", "dog", "bird")
    assert [r.labels.tolist() for r in merged.records] == [[0, 1], [2, 1, -1], [0]]  # -1 stays unknown
    assert merged.records[2].phrases == ("a red ball",)


def test_own_negatives_keep_one_training_set_per_vocabulary(tmp_path):
    config = TrainConfig(image_size=64, num_texts=4)
    datasets = [_dataset(["cat", "dog"], [0]), _dataset(["bird"], [0])]
    mixed, sampler = training_set(datasets, "own", config)
    assert isinstance(mixed, MixedDataset) and [len(p.dataset.vocabulary) for p in mixed.datasets] == [2, 1]
    assert sorted(sampler.epoch_order(0).tolist()) == [0, 1]
    union, _ = training_set(datasets, "union", config)
    assert [p.dataset.vocabulary.names for p in union.datasets] == [("cat", "dog", "bird")]


@pytest.mark.parametrize("negatives", ["union", "own"])
def test_grounding_and_detection_records_train_as_separate_parts(negatives):
    # one part holding both kinds made a mosaic combine them, which stops training at its first such draw
    detection, grounding = _dataset(["cat", "dog"], [1]), _dataset([], [0], phrases=("a red ball",))
    both = DetectionDataset(detection.records + grounding.records, detection.vocabulary, source="odvg")
    mixed, sampler = training_set([detection, both, grounding], negatives, TrainConfig(image_size=64, num_texts=4))
    kinds = [{r.is_grounding for r in part.dataset.records} for part in mixed.datasets]
    assert all(len(kind) == 1 for kind in kinds) and {True, False} == set().union(*kinds)
    assert sum(len(part) for part in mixed.datasets) == 4 and sampler.epoch_length(0) == 4


def test_class_balanced_repeats_images_of_rare_classes_in_pretraining_too():
    from cl_detect.data.sampling import RepeatFactorSampler
    common = [DetectionRecord(f"c{i}.png", 64, 64, boxes=[[0, 0, 9, 9]], labels=[0]) for i in range(3999)]
    rare = DetectionRecord("r.png", 64, 64, boxes=[[0, 0, 9, 9]], labels=[1])  # in 1 of 4000 images
    dataset = DetectionDataset(common + [rare], Vocabulary(("cat", "dog")), source="x")
    config = TrainConfig(image_size=64, num_texts=4, class_balanced=True)
    _, sampler = training_set([dataset], "union", config)  # it was a plain MixingSampler here
    assert isinstance(sampler, RepeatFactorSampler)
    # repeat factor sqrt(0.001 / (1 / 4000)) = 2: the rare image twice per epoch, the others once
    assert [(sampler.epoch_order(epoch) == 3999).sum() for epoch in range(3)] == [2, 2, 2]


def test_synthetic_world_is_written_once_and_never_silently_replaced(tmp_path):
    from cl_detect.engine.pretrain import _ensure_synthetic_world

    options = {"path": str(tmp_path / "world"), "seed": 1, "image_size": 64, "num_base_train": 4, "num_test": 2,
               "num_task_train": 2, "num_tasks": 1}
    _ensure_synthetic_world(options)
    written = (tmp_path / "world" / "world.json").stat().st_mtime_ns
    _ensure_synthetic_world(options)  # same settings: reused as is
    assert (tmp_path / "world" / "world.json").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match=r"wanted num_base_train 8 \(found 4\)"):
        _ensure_synthetic_world({**options, "num_base_train": 8})


def test_unset_variable_in_a_dataset_path_is_a_clear_error(monkeypatch):
    from cl_detect.engine._pretrain_config import DatasetSpec
    monkeypatch.delenv("NO_SUCH_ROOT", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_ROOT is not set"):
        DatasetSpec(path="${NO_SUCH_ROOT}/train.json")


def test_a_numbered_gpu_under_torchrun_is_refused_before_joining(tmp_path, monkeypatch):
    from cl_detect.engine.pretrain import pretrain

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group is joined
    config = _config(tiny_world(tmp_path), tmp_path, train={**TRAIN, "device": "cuda:0"})
    with pytest.raises(ValueError, match=r"train.device 'cuda:0' would put every torchrun process on one GPU"):
        pretrain(config)
