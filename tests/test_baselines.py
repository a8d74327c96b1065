"""Baselines: zeroshot trains nothing, the specialist's closed-set head, the joint-training merge."""
import numpy as np
import pytest
import torch

from _tiny_training import tiny_model
from cl_detect.bench.baselines import evaluation_applies, skips_training
from cl_detect.bench.joint import merge_task_datasets
from cl_detect.data.merge import union_vocabulary
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.engine.state import load_model_state, model_state
from cl_detect.methods import TaskContext, create_method
from cl_detect.methods.specialist import ClosedSetScore


def test_zeroshot_trains_nothing():
    model = tiny_model(methods=[create_method("zeroshot")])
    trainable, total = model.parameter_counts()
    assert trainable == 0 and total > 0
    assert model.named_trainable_parameters() == []
    assert skips_training(model) and not skips_training(tiny_model())
    with pytest.raises(ValueError, match="decide which parameters train"):
        tiny_model(methods=[create_method("zeroshot"), create_method("finetune")])


def _specialist(vocabulary=("red circle", "blue square")):
    model = tiny_model(methods=[create_method("specialist")])
    model.hook("before_task", TaskContext(index=0, name="shapes", vocabulary=vocabulary))
    return model.eval()


def test_specialist_head_shape_and_trainable():
    model = _specialist()
    heads = model.detector.head.cls_contrasts
    assert all(isinstance(h, ClosedSetScore) and h.classifiers[0].out_channels == 2 for h in heads)
    assert all(p.requires_grad for p in heads.parameters())
    text = model.embed_texts([["blue square", "red circle", " "]])
    with torch.no_grad():
        output = model.detector(torch.rand(1, 3, 64, 64), text)
    assert [tuple(c.shape) for c in output.cls_logits] == [(1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 2, 2)]
    assert torch.all(output.cls_logits[0][:, 2] == -30.0)  # the padding prompt is no class


def test_specialist_logits_ignore_text_values():
    model = _specialist()
    score = model.detector.head.cls_contrasts[0]
    region = torch.randn(2, 32, 5, 5)
    names = model.embed_texts([["red circle", "blue square"]])
    with torch.no_grad():
        channels = score.classifiers[0](region)
        in_order = score(region, names.expand(2, -1, -1))
        # a rescaled embedding of the same names, in swapped order: same class channels, swapped
        swapped = score(region, 3.0 * names.flip(1).expand(2, -1, -1))
    assert torch.allclose(in_order, channels)
    assert torch.allclose(swapped, channels.flip(1))
    unknown = model.embed_texts([["green star"]])
    assert torch.all(score(region, unknown.expand(2, -1, -1)) == -30.0)


def test_specialist_applies_and_resumes():
    model = _specialist()
    specialist = model.method("specialist")
    assert evaluation_applies(model, ["blue square"]) and not evaluation_applies(model, ["person", "car"])
    model.hook("before_task", TaskContext(index=1, name="more", vocabulary=("green star",)))
    assert [c.out_channels for c in model.detector.head.cls_contrasts[1].classifiers] == [2, 1]
    # a fresh model (open-vocabulary head) loads the saved closed-set state
    fresh = tiny_model(methods=[create_method("specialist")])
    load_model_state(fresh, model_state(model))
    assert fresh.method("specialist").vocabularies == specialist.vocabularies
    region = torch.randn(1, 32, 4, 4)
    text = model.embed_texts([["green star", "red circle"]])
    with torch.no_grad():
        assert torch.equal(fresh.detector.head.cls_contrasts[2](region, text),
                           model.detector.head.cls_contrasts[2](region, text))


def _dataset(names, labels, root):
    records = [DetectionRecord(f"{root}/{i}.jpg", 64, 64, [[0, 0, 10, 10]] * len(lab), lab, image_id=1 + i)
               for i, lab in enumerate(labels)]
    return DetectionDataset(records, Vocabulary(tuple(names)), source=root, image_root=root)


def test_joint_merge_union_vocabulary_and_labels():
    first = _dataset(["cat", "dog"], [[0, 1], [1]], "/data/a")
    second = _dataset(["fish", "cat"], [[0, 1, -1]], "/data/b")
    union, maps = union_vocabulary([first.vocabulary, second.vocabulary])
    assert union.names == ("cat", "dog", "fish") and union.category_ids == (1, 2, 3)
    assert [m.tolist() for m in maps] == [[0, 1], [2, 0]]
    merged = merge_task_datasets([first, second])
    assert [r.labels.tolist() for r in merged.records] == [[0, 1], [1], [2, 0, -1]]
    assert [r.image_id for r in merged.records] == [1, 2, 3] and merged.image_root == "/data"
    assert second.records[0].labels.tolist() == [0, 1, -1]  # inputs untouched
    assert np.array_equal(merged.records[2].boxes, second.records[0].boxes)


def test_specialist_trains_its_classifier():
    model = _specialist().train()
    batch = {"images": torch.rand(2, 3, 64, 64), "texts": [["red circle", "blue square", " "]] * 2,
             "gt_boxes": torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 10.0, 60.0, 50.0]]]),
             "gt_labels": torch.tensor([[0], [1]]), "gt_mask": torch.ones(2, 1, dtype=torch.bool)}
    losses = model(batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    classifier = model.detector.head.cls_contrasts[0].classifiers[0]
    assert classifier.weight.grad is not None and classifier.weight.grad.abs().sum() > 0
