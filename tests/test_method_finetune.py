"""`finetune`: progressive unfreezing restarts with every task."""
import pytest

from cl_detect.methods import TaskContext, create_method

from _tiny_training import tiny_model


def _backbone_trains(model) -> bool:
    return any(p.requires_grad for p in model.detector.backbone.parameters())


def test_unfreeze_epochs_count_from_each_task_start():
    model = tiny_model(methods=[create_method("finetune", {"unfreeze_epochs": {"backbone": 1}})])
    first = TaskContext(0, "t0", ("a",))
    model.hook("before_task", first)
    at_start = model.parameter_counts()[0]
    assert not _backbone_trains(model)
    model.hook("before_epoch", 0)
    model.hook("before_epoch", 1)
    assert _backbone_trains(model) and model.parameter_counts()[0] > at_start
    model.hook("after_task", first)

    model.hook("before_task", TaskContext(1, "t1", ("b",)))  # the backbone waits for epoch 1 again
    assert not _backbone_trains(model) and model.parameter_counts()[0] == at_start
    model.hook("before_epoch", 0)
    assert not _backbone_trains(model)


def test_unfreeze_epochs_for_a_part_that_never_trains_is_an_error():
    # parts: neck+head never trains the backbone, so {"backbone": 2} was silently ignored
    with pytest.raises(ValueError, match=r"unfreeze_epochs has \['backbone'\], which parts='neck\+head' never"):
        create_method("finetune", {"parts": "neck+head", "unfreeze_epochs": {"backbone": 2}})
    for parts, part in (("all", "backbone"), ("neck+head", "neck"), ("head", "head")):
        create_method("finetune", {"parts": parts, "unfreeze_epochs": {part: 1}})


def test_frozen_backbone_stages_on_a_backbone_without_stages_is_an_error():
    # a timm backbone has no stem/stage<i> modules: frozen_backbone_stages froze nothing, silently
    import torch

    from cl_detect.methods import ContinualModel
    from cl_detect.models.registry import create_detector

    from _hash_text import TEXT_DIM, HashTextEncoder

    pytest.importorskip("timm")
    options = {"frozen_backbone_stages": 2}
    cspdarknet = tiny_model(methods=[create_method("finetune", options)])
    frozen = {n for n, p in cspdarknet.named_parameters() if n.startswith("detector.backbone.") and not p.requires_grad}
    assert frozen and all(n.startswith(("detector.backbone.stem.", "detector.backbone.stage1.",
                                        "detector.backbone.stage2.")) for n in frozen)
    torch.manual_seed(0)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM, backbone="timm:resnet18")
    with pytest.raises(ValueError, match="TimmBackbone.*set frozen_backbone_stages to 0"):
        ContinualModel(detector, HashTextEncoder(buckets=97, seed=11), [create_method("finetune", options)])


@pytest.mark.parametrize("options, message", [
    ({"lr_multipliers": {"backbone": "0.1"}}, "lr_multipliers must be numbers"),  # a TypeError comparing it
    ({"lr_multipliers": "backbone"}, "lr_multipliers must be a mapping"),  # read letter by letter
    ({"unfreeze_epochs": {"backbone": "2"}}, "unfreeze_epochs must be whole epochs"),  # a TypeError at build
    ({"unfreeze_epochs": {"backbone": -1}}, "unfreeze_epochs must be whole epochs"),
])
def test_wrongly_typed_part_tables_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        create_method("finetune", options)
