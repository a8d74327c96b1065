"""`finetune`: progressive unfreezing restarts with every task."""
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
