"""Engine parts: weight transfer report, optimizer groups, LR schedule, EMA, and the run logs."""
import json
import math

import pytest
import torch
from torch import nn

from cl_detect.engine.ema import ModelEMA
from cl_detect.engine.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups, scaled_weight_decay
from cl_detect.engine.runlog import RunLogger
from cl_detect.engine.state import settings_changes
from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.engine.transfer import transfer_weights
from cl_detect.methods import create_method
from cl_detect.models.registry import create_detector

from _tiny_training import base_split, tiny_config, tiny_model, tiny_world


# ----------------------------------------------------------------- transfer report
def test_transfer_512_to_384_text_width_reports_reinitialised_tensors(capsys):
    torch.manual_seed(0)
    source = create_detector("yolo_world_v2_t", text_dim=512).state_dict()
    target = create_detector("yolo_world_v2_t", text_dim=384)
    report = transfer_weights(target, source)
    printed = capsys.readouterr().out
    total = len(target.state_dict())
    assert printed.startswith(f"transferred {len(report.transferred)}/{total} tensors; re-initialised ")
    assert 0 < len(report.transferred) < total and report.total == total
    # exactly the text-width-dependent tensors differ: text guides in the neck, embeddings/norms in the head
    assert set(report.reinitialised) == set(report.shape_mismatch)
    assert all(".guide_fc." in n or ".cls_preds." in n or ".cls_contrasts." in n for n in report.reinitialised)
    assert any(".guide_fc." in n for n in report.reinitialised)
    own = target.state_dict()
    assert all(torch.equal(own[n], source[n]) for n in report.transferred)
    assert all(n.startswith("backbone.") or n in report.transferred
               for n in own if n.startswith("backbone."))
    assert not report.unused


def test_transfer_into_a_timm_backbone_keeps_the_head():
    source = create_detector("yolo_world_v2_t", text_dim=32).state_dict()
    target = create_detector("yolo_world_v2_t", text_dim=32, backbone="timm:resnet10t")
    report = transfer_weights(target, source, verbose=False)
    own = target.state_dict()
    assert all(n in report.reinitialised for n in own if n.startswith("backbone."))
    assert all(n in report.transferred for n in own if n.startswith("head."))
    assert any(n.startswith("backbone.") for n in report.unused)
    assert report.summary().startswith(f"transferred {len(report.transferred)}/{len(own)} tensors")


# ----------------------------------------------------------------- optimizer groups
def test_no_weight_decay_on_norms_biases_and_logit_scale():
    model = tiny_model()
    groups = parameter_groups(model.named_trainable_parameters(), lr=1e-3, weight_decay=0.05)
    decay_of = {name: group["weight_decay"] for group in groups for name in group["names"]}
    assert decay_of["detector.head.cls_contrasts.0.logit_scale"] == 0.0
    assert decay_of["detector.head.cls_contrasts.0.bias"] == 0.0
    assert decay_of["detector.backbone.stem.bn.weight"] == 0.0
    assert decay_of["detector.head.cls_preds.0.2.bias"] == 0.0
    assert decay_of["detector.backbone.stem.conv.weight"] == 0.05
    assert decay_of["detector.neck.top_down_layers.1.attn_block.guide_fc.weight"] == 0.05
    # every trainable parameter is in exactly one group; the frozen text tower in none
    names = [n for group in groups for n in group["names"]]
    assert len(names) == len(set(names)) == len(model.named_trainable_parameters())
    assert not any(n.startswith("text_encoder.") for n in names)


@pytest.mark.parametrize("total, factor", [(1, 1.0), (4, 1.0), (16, 1.0), (24, 1.125), (48, 0.75), (64, 1.0),
                                           (128, 2.0)])
def test_weight_decay_scales_with_the_total_batch_by_the_official_rule(total, factor):
    # YOLOWv5OptimizerConstructor: wd x total * max(round(64 / total), 1) / 64
    assert scaled_weight_decay(0.05, total) == pytest.approx(0.05 * factor)


def test_lr_multipliers_make_their_own_groups():
    model = tiny_model(methods=[create_method("finetune", {"lr_multipliers": {"head": 0.1, "backbone": 0.5}})])
    groups = parameter_groups(model.named_trainable_parameters(), lr=2e-3, weight_decay=0.05)
    for group in groups:
        prefixes = {n.split(".")[1] for n in group["names"]}
        expected = {"head": 2e-4, "backbone": 1e-3, "neck": 2e-3}
        assert len(prefixes) == 1 and group["lr"] == pytest.approx(expected[prefixes.pop()])
    optimizer = build_optimizer(groups, "adamw", 2e-3)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([2e-4, 1e-3, 2e-3])


# ----------------------------------------------------------------- LR schedule
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_warms_up_then_decays_to_the_final_factor(schedule):
    total, warmup, final = 100, 10, 0.01
    factors = [lr_factor(step, total, warmup, schedule, final) for step in range(total + 1)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == 1.0 and factors[total] == pytest.approx(final)
    middle = warmup + (total - warmup) // 2
    expected_middle = 1 - 0.5 * (1 - final) if schedule == "linear" else final + (1 - final) * 0.5
    assert factors[middle] == pytest.approx(expected_middle)
    if schedule == "cosine":
        quarter = warmup + (total - warmup) // 4  # progress 0.25 (rounded down to a whole step)
        progress = (quarter - warmup) / (total - warmup)
        assert factors[quarter] == pytest.approx(final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))


def test_scheduler_sets_each_group_lr_from_its_own_base():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=4, schedule="linear", final_factor=0.01)
    seen = []
    for step in range(20):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, (lr_a, lr_b) in enumerate(seen):
        factor = lr_factor(step, 20, 4, "linear", 0.01)
        assert lr_a == pytest.approx(factor) and lr_b == pytest.approx(0.1 * factor)
    with pytest.raises(ValueError, match="schedule must be"):
        build_scheduler(optimizer, 20, 4, "step", 0.01)


# ----------------------------------------------------------------- EMA
def test_ema_momentum_schedule_and_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, momentum=1e-4, gamma=2000.0)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))
    assert ema.current_momentum() == 1.0
    ema.update(model)  # the first update copies the trained model (mmengine): the start weights are gone
    for name, value in ema.module.state_dict().items():
        assert torch.equal(value, model.state_dict()[name])
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))  # BatchNorm running stats and num_batches_tracked change
    momentum = (1 - 1e-4) * math.exp(-2 / 2000.0) + 1e-4  # mmdet ExpMomentumEMA at steps = 1
    assert ema.current_momentum() == pytest.approx(momentum)
    ema.update(model)
    source = model.state_dict()
    for name, value in ema.module.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, start[name] * (1 - momentum) + source[name] * momentum)
        else:
            assert torch.equal(value, source[name])  # integer buffers are copied
    assert ema.steps == 2
    assert ema.current_momentum() == pytest.approx((1 - 1e-4) * math.exp(-3 / 2000.0) + 1e-4)
    ema.steps = 10**6
    assert ema.current_momentum() == pytest.approx(1e-4)
    assert not any(p.requires_grad for p in ema.module.parameters())


# ----------------------------------------------------------------- logs
def test_jsonl_and_tensorboard_logs_hold_loss_parts_lr_speed_and_memory(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    world = tiny_world(tmp_path)
    config = tiny_config(epochs=1, warmup_epochs=0.0)
    dataset, sampler = build_task_training_set(base_split(world), [], config)
    train_one_task(tiny_model(), dataset, config, tmp_path / "run", sampler=sampler)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert {"loss", "loss_cls", "loss_bbox", "loss_dfl", "lr", "images_per_s", "memory_mb", "num_pos"} <= set(row)
        assert row["loss"] == pytest.approx(row["loss_cls"] + row["loss_bbox"] + row["loss_dfl"], rel=1e-5)
        assert row["images_per_s"] > 0 and row["memory_mb"] > 0
    # the logged LR is the one the logged step used: linear decay from 1e-3 towards 1e-5 over 4 steps
    assert [row["lr"] for row in rows] == pytest.approx(
        [1e-3 * lr_factor(s, 4, 0, "linear", 0.01) for s in range(4)])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_cls", "train/loss_bbox", "train/loss_dfl", "train/lr", "train/images_per_s",
            "train/memory_mb"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_a_resumed_session_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    """A run stopped (Ctrl-C, a kill) after its checkpoint at step 4 had logged steps 5 and 6, and a row cut
    short; resumed, it logs 5.. again: each step is logged once, in order, in the JSONL and in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = RunLogger(tmp_path)
    for step in range(1, 7):
        first.log({"step": step, "loss": float(step)}, step)
    first.close()
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"step": 7, "lo')  # the process stopped while writing
    resumed = RunLogger(tmp_path)
    for step in range(5, 9):
        resumed.log({"step": step, "loss": step + 0.5}, step)
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(row["step"], row["loss"]) for row in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                                                            (5, 5.5), (6, 6.5), (7, 7.5), (8, 8.5)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(row["step"], row["loss"]) for row in rows]
    started_over = RunLogger(tmp_path)  # --no-resume: a run from step 1 replaces the old log
    started_over.log({"step": 1, "loss": 9.0}, 1)
    started_over.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]


# ----------------------------------------------------------------- recorded settings


def test_settings_changes_compare_the_keys_both_record_and_whole_values_elsewhere():
    old = {"train": {"lr": 1e-3, "epochs": 2}, "methods": {"finetune": {}}, "negatives": "all", "seed": 0}
    new = {"train": {"lr": 5e-4, "epochs": 2, "added_later": 1}, "methods": {"lora": {}}, "negatives": "all",
           "seed": 1, "new_key": 3}
    # a train field or a key a later version adds is no change; a method list compares whole (the
    # pretrain record once listed a key that was missing from an older record as a change: None -> value)
    assert settings_changes(old, new) == ["train.lr 0.001 -> 0.0005", "methods {'finetune': {}} -> {'lora': {}}",
                                          "seed 0 -> 1"]
    assert settings_changes(old, new, skip=("seed",), by_key=()) == [
        "train {'lr': 0.001, 'epochs': 2} -> {'lr': 0.0005, 'epochs': 2, 'added_later': 1}",
        "methods {'finetune': {}} -> {'lora': {}}"]
    assert settings_changes(old, old) == []
