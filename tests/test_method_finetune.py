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
