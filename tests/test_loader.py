"""TrainDataset / EvalDataset items, the padding collate, and worker-count-independent determinism."""
import cv2
import numpy as np
import pytest
import torch

from cl_detect.data.loader import (EvalDataset, TrainDataset, build_eval_loader, build_train_loader,
                                   collate_detection)
from cl_detect.data.preprocess import images_to_device, letterbox, load_image_bgr, to_tensor, to_uint8_tensor
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.data.sampling import DrawKey
from cl_detect.data.transforms import AugmentConfig

from _drawn_boxes import assert_boxes_match_pixels, write_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path, num_images=8)


def _to_bgr(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])


@pytest.mark.parametrize("mosaic", [True, False])
def test_train_item_boxes_match_drawn_rectangles(dataset, mosaic):
    config = AugmentConfig(image_size=128, mosaic=mosaic, hsv_gains=(0, 0, 0))
    train = TrainDataset(dataset, config, num_texts=5)
    checked = 0
    for index in range(len(train)):
        item = train[DrawKey(index, 0, index)]
        assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.uint8
        assert len(item["texts"]) == 5 and item["labels"].dtype == torch.long
        if len(item["boxes"]):
            names = [item["texts"][i] for i in item["labels"]]
            class_of = {name: c for c, name in enumerate(dataset.vocabulary.names)}
            assert_boxes_match_pixels(_to_bgr(item["image"]), item["boxes"].numpy(),
                                      np.array([class_of[n] for n in names]))
            checked += 1
    assert checked >= 4


def test_training_letterbox_equals_eval_preprocess(dataset):
    train = TrainDataset(dataset, AugmentConfig.no_augmentation(128))
    evaluation = EvalDataset(dataset, image_size=128)
    for index in (0, 1, 2):
        expected, info = letterbox(load_image_bgr(dataset.records[index].image_path), 128)
        assert torch.equal(train[index]["image"], to_uint8_tensor(expected))
        item = evaluation[index]
        assert torch.equal(item["image"], to_uint8_tensor(expected)) and item["meta"]["letterbox"] == info
        assert item["texts"] == list(dataset.vocabulary.names)
        np.testing.assert_allclose(info.unmap_boxes(item["boxes"]).numpy(), dataset.records[index].boxes, atol=1e-4)


def test_uint8_items_become_exactly_the_float_images_on_the_device(dataset):
    image, _ = letterbox(load_image_bgr(dataset.records[0].image_path), 64)
    batch = torch.stack([to_uint8_tensor(image)] * 2)
    assert batch.dtype == torch.uint8 and batch.element_size() == 1
    converted = images_to_device(batch, torch.device("cpu"))
    assert converted.dtype == torch.float32 and torch.equal(converted[1], to_tensor(image))
    assert 0 < float(converted.max()) <= 1
    floats = converted.clone()
    assert images_to_device(floats, torch.device("cpu")) is floats  # float batches pass through


def test_collate_pads_boxes_and_texts():
    items = [{"image": torch.zeros(3, 64, 64), "boxes": torch.ones(n, 4) * (n + 1), "labels": torch.arange(n),
              "texts": ["a", "b", ""][:t], "image_id": n, "meta": {}} for n, t in ((2, 3), (0, 1), (3, 2))]
    batch = collate_detection(items)
    assert batch["images"].shape == (3, 3, 64, 64)
    assert batch["gt_boxes"].shape == (3, 3, 4) and batch["gt_labels"].dtype == torch.long
    assert batch["gt_mask"].tolist() == [[True, True, False], [False] * 3, [True] * 3]
    assert batch["gt_boxes"][0, 1].tolist() == [3.0] * 4 and batch["gt_boxes"][0, 2].tolist() == [0.0] * 4
    assert batch["gt_labels"][2].tolist() == [0, 1, 2]
    assert batch["texts"] == [["a", "b", ""], ["a", "", ""], ["a", "b", ""]]
    assert batch["image_ids"].tolist() == [2, 0, 3]


def _batches(dataset, num_workers, seed):
    train = TrainDataset(dataset, AugmentConfig(image_size=64), num_texts=4, seed=seed)
    loader = build_train_loader(train, batch_size=3, num_workers=num_workers, seed=seed)
    return [batch for _ in range(2) for batch in loader]  # two epochs


def test_same_seed_same_batches_with_0_and_2_workers(dataset):
    serial, parallel = _batches(dataset, 0, seed=1), _batches(dataset, 2, seed=1)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["gt_boxes"], b["gt_boxes"])
        assert a["texts"] == b["texts"] and torch.equal(a["image_ids"], b["image_ids"])
    assert not torch.equal(serial[0]["images"], serial[2]["images"])  # epochs differ
    other = _batches(dataset, 0, seed=2)
    assert not torch.equal(serial[0]["images"], other[0]["images"])


def test_set_mosaic_reaches_persistent_workers(dataset):
    train = TrainDataset(dataset, AugmentConfig(image_size=64, scale_range=(1, 1), max_translate=0,
                                                hsv_gains=(0, 0, 0), flip_prob=0), num_texts=4)
    loader = build_train_loader(train, batch_size=8, num_workers=2)
    with_mosaic = next(iter(loader))
    train.set_mosaic(False)
    without = next(iter(loader))
    expected = torch.stack([to_uint8_tensor(letterbox(load_image_bgr(r.image_path), 64)[0]) for r in dataset.records])
    order = [int(i) - 1 for i in without["image_ids"]]
    assert torch.equal(without["images"], expected[order])
    assert not torch.equal(with_mosaic["images"], expected[[int(i) - 1 for i in with_mosaic["image_ids"]]])


def test_grounding_records_use_their_phrases(tmp_path):
    image = np.full((64, 64, 3), 40, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), image)
    record = DetectionRecord(str(tmp_path / "g.png"), 64, 64, [[5, 5, 30, 30], [30, 30, 60, 60]], [0, 2],
                             phrases=("a man", "a hat", "a man"), caption="a man in a hat near a man")
    grounding = DetectionDataset([record], Vocabulary(()))
    item = TrainDataset(grounding, AugmentConfig.no_augmentation(64), num_texts=6)[0]
    assert sorted(item["texts"]) == ["", "", "", "", "a hat", "a man"]
    assert [item["texts"][i] for i in item["labels"]] == ["a man", "a man"]


def test_eval_loader_keeps_order(dataset):
    loader = build_eval_loader(EvalDataset(dataset, 64), batch_size=3)
    ids = torch.cat([batch["image_ids"] for batch in loader]).tolist()
    assert ids == [r.image_id for r in dataset.records]
