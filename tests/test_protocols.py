"""Protocol files and `RunConfig`: merging, variables, validation (dataset reading: test_protocol_data)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from cl_detect.bench.config import load_run_config, merge_shallow
from cl_detect.bench.experiment import method_runs, with_overrides

from _protocol_files import MINIMAL, write_protocol

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


def test_unset_variable_unknown_key_and_bad_training_field_are_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "data_root": "${NOT_SET_ANYWHERE}"}))
    with pytest.raises(ValueError, match="unknown protocol key"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "epochs": 3}))
    with pytest.raises(ValueError, match="unknown train setting"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "train": {"epochz": 3}}))
    with pytest.raises(ValueError, match=r"unknown eval setting\(s\) \['compiled'\]; valid: .*'compile'"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "eval": {"compiled": True}}))
    assert load_run_config(write_protocol(tmp_path, {**MINIMAL, "eval": {"compile": True}})).eval.compile
    with pytest.raises(ValueError, match="eval image_size must be a positive multiple of 32.*got 500"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "eval": {"image_size": 500}}))
    with pytest.raises(ValueError, match="protocol must be one of"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "retention": [{"name": "r", "data": "c.json",
                                                                     "protocol": "voc"}]}))
    with pytest.raises(ValueError, match="unique"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "retention": [{"name": "t", "data": "c.json"}]}))


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
            load_run_config(write_protocol(tmp_path, {**MINIMAL, **extra}))


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
            load_run_config(write_protocol(tmp_path, {**MINIMAL, **extra}))


def test_override_files_merge_in_order_and_their_errors_name_them(tmp_path):
    head, lr = tmp_path / "head.yaml", tmp_path / "lr.yaml"
    head.write_text("method_options: {finetune: {parts: head}}\ntrain: {epochs: 3}\n")
    lr.write_text("train: {lr: 0.5}\nseeds: [4]\n")
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "train": {"epochs": 1, "batch_size": 2}}),
                             defaults_path=None, override_files=[head, lr])
    assert config.train == {"epochs": 3, "batch_size": 2, "lr": 0.5} and config.seeds == [4]
    assert config.method_options == {"finetune": {"parts": "head"}}
    (tmp_path / "list.yaml").write_text("- finetune\n")
    with pytest.raises(ValueError, match="list.yaml: an override file holds one mapping"):
        load_run_config(write_protocol(tmp_path, MINIMAL), override_files=[tmp_path / "list.yaml"])
    (tmp_path / "typo.yaml").write_text("trian: {epochs: 1}\n")
    with pytest.raises(ValueError, match=r"unknown protocol key\(s\) in .*typo.yaml: \['trian'\]"):
        load_run_config(write_protocol(tmp_path, MINIMAL), override_files=[tmp_path / "typo.yaml"])
    (tmp_path / "nested.yaml").write_text("train: {epochz: 1}\n")
    with pytest.raises(ValueError, match=r"p.yaml \(with .*nested.yaml\): unknown train setting"):
        load_run_config(write_protocol(tmp_path, MINIMAL), override_files=[tmp_path / "nested.yaml"])


def test_compositions_that_cannot_work_fail_before_any_run(tmp_path):
    config = load_run_config(write_protocol(tmp_path, MINIMAL), defaults_path=None)
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
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "eval": {"compile": True}, "train": {"device": "cpu"}}),
                             defaults_path=None)
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler.*eval.compile"):
        run_experiment(config, ["finetune"], None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cuda_device_the_machine_lacks_stops_before_any_data_is_read(tmp_path, monkeypatch):
    # it stopped every run deep inside torch ("Found no NVIDIA driver"), a traceback, after loading
    from cl_detect.bench.experiment import run_experiment

    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "train": {"device": "cuda"}}), defaults_path=None)
    with pytest.raises(ValueError, match=r"train.device is 'cuda', but this machine has 0 CUDA device\(s\); use 'cpu'"):
        run_experiment(config, ["finetune"], None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_label_is_not_given_to_other_methods(tmp_path):
    # `--override baselines/head_only.yaml --methods zeroshot` wrote a zero-shot run as finetune-head
    from cl_detect.bench.experiment import run_experiment

    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "label": "finetune-head", "methods": ["finetune"]}),
                             defaults_path=None)
    with pytest.raises(ValueError, match=r"label 'finetune-head' names the run of methods \['finetune'\]"):
        run_experiment(config, ["zeroshot"], None, tmp_path / "out")


def test_method_lists_and_command_line_overrides(tmp_path):
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "method_options": {"ewc": {"image_size": 640}},
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
    bare = with_overrides(load_run_config(write_protocol(tmp_path, MINIMAL), defaults_path=None), image_size=320)
    assert bare.method_options["ewc"]["image_size"] == 320


def test_exponent_numbers_are_numbers_and_typos_or_wrong_types_fail_at_load(tmp_path):
    text = yaml.safe_dump({**MINIMAL, "train": {"lr": 0.5}, "method_options": {"ewc": {"strength": 2.0}}})
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("0.5", "1e-3").replace("2.0", "1e3"))  # as people write them
    config = load_run_config(path)
    assert config.train_config().lr == 0.001 and config.method_options["ewc"]["strength"] == 1000.0
    with pytest.raises(ValueError, match=r"method_options: unknown method 'lroa'; registered: .*lora"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "method_options": {"lroa": {"rank": 2}}}))
    with pytest.raises(ValueError, match=r"'rank' \(option\(s\) for method 'lora'\) must be int, got True"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "method_options": {"lora": {"rank": True}}}))
    with pytest.raises(ValueError, match=r"'amp' \(train setting\(s\)\) must be bool, got 'yes please'"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "train": {"amp": "yes please"}}))
    with pytest.raises(ValueError, match=r"'epochs' \(train setting\(s\)\) must be int, got 2.5"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "train": {"epochs": 2.5}}))


def test_the_cl_detect_script_prints_input_errors_as_one_message(tmp_path, monkeypatch, capsys):
    from cl_detect.cli import console_main
    path = write_protocol(tmp_path, {**MINIMAL, "method_options": {"lroa": {"rank": 2}}})
    monkeypatch.setattr(sys, "argv", ["cl-detect", "run", str(path)])
    monkeypatch.delenv("CL_DETECT_DEBUG", raising=False)
    assert console_main() == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: protocol 'p' method_options: unknown method 'lroa'")
    assert "Traceback" not in err
    monkeypatch.setenv("CL_DETECT_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown method 'lroa'"):
        console_main()


def test_negative_seeds_and_empty_image_caps_fail_at_load_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"seeds must be a list of integers \(0 or more\).*got \[-1\]"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "seeds": [-1]}))
    task = {"name": "t", "train": {"path": "a.json", "max_images": 0}, "test": "b.json"}
    with pytest.raises(ValueError, match=r"a.json: max_images must be 1 or more, got 0"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "tasks": [task]}))


def test_a_label_too_long_for_a_file_name_fails_when_the_protocol_is_read(tmp_path):
    # it used to fail after data and model loading, with "[Errno 36] File name too long"
    with pytest.raises(ValueError, match=r"protocol label 'x+'\.\.\. is 250 bytes long.*at most 200 bytes"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "label": "x" * 250}))
    task = {**MINIMAL["tasks"][0], "name": "t" * 230}
    with pytest.raises(ValueError, match=r"protocol task name 't+'\.\.\. is 230 bytes"):
        load_run_config(write_protocol(tmp_path, {**MINIMAL, "tasks": [task]}))


def test_an_lvis_retention_set_may_be_subset(tmp_path):
    # LVIS evaluation scores a subset's own images (tests/test_eval_lvis.py), so max_images is allowed
    retention = [{"name": "lvis", "protocol": "lvis", "data": {"path": "lvis.json", "max_images": 50}}]
    config = load_run_config(write_protocol(tmp_path, {**MINIMAL, "retention": retention}))
    assert config.retention[0].data[0].max_images == 50
