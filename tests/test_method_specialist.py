"""`specialist`: a task resumed from its checkpoint trains exactly like an uninterrupted one."""
import pytest
import torch

from cl_detect.engine.task_data import build_task_training_set
from cl_detect.engine.train import train_one_task
from cl_detect.methods import TaskContext, create_method

from _tiny_training import base_split, tiny_config, tiny_model, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("tiny"), num_train=8, num_test=4)


def _train(world, out_dir, config, **kwargs):
    data = base_split(world)
    model = tiny_model(seed=0, methods=[create_method("specialist")])
    model.hook("before_task", TaskContext(0, "base", tuple(data.vocabulary.names), data))
    dataset, sampler = build_task_training_set(data, [], config)
    return model, train_one_task(model, dataset, config, out_dir, sampler=sampler, **kwargs)


def test_resumed_task_equals_uninterrupted(world, tmp_path):
    # the resumed model already has its closed-set classifiers: loading the checkpoint must keep
    # those modules, which the optimizer holds, instead of building new ones it does not
    config = tiny_config(epochs=1, ema=False, mosaic=False, close_mosaic_epochs=0, checkpoint_every_steps=1)
    model_a, result_a = _train(world, tmp_path / "a", config)
    _, first = _train(world, tmp_path / "b", config, stop_after_steps=1)
    assert first.status == "interrupted" and first.steps == 1
    model_b, result_b = _train(world, tmp_path / "b", config, resume=True)
    assert result_b.status == "finished" and result_b.steps == result_a.steps == 2

    state_a, state_b = model_a.detector.state_dict(), model_b.detector.state_dict()
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, f"resumed run differs in {different[:5]}"


def test_a_task_without_a_class_list_is_refused_by_name():
    # grounding data (captions and phrases) has no class list: the classifier init divided by zero
    model = tiny_model(seed=0, methods=[create_method("specialist")])
    with pytest.raises(ValueError, match="specialist: task 'captions' has no class list"):
        model.hook("before_task", TaskContext(0, "captions", ()))
