"""Tiny data and models for the replay and mix tests (CPU, no downloads).

`tiny_model` uses the hashed-character `HashTextEncoder` (tests/_hash_text.py);
`write_task` draws 64-px images of coloured boxes and returns them as a
`DetectionDataset`; `write_grounding_json` writes an MDETR-style grounding json
whose captions name the drawn boxes.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary
from cl_detect.methods import ContinualModel, create_method
from cl_detect.models.registry import create_detector

from _hash_text import TEXT_DIM, HashTextEncoder


def text_encoder() -> HashTextEncoder:
    """The hashed-character text encoder of these tests (211-row table, seed 7)."""
    return HashTextEncoder(buckets=211, seed=7)


IMAGE_SIZE = 64
COLOURS = [(40, 40, 220), (220, 60, 40), (40, 200, 60), (30, 210, 230), (200, 40, 200), (128, 128, 128)]


def tiny_model(methods: list) -> ContinualModel:
    """Tiny YOLO-World v2 + hashed encoder + full fine-tuning + `methods`."""
    torch.manual_seed(0)
    detector = create_detector("yolo_world_v2_t", text_dim=TEXT_DIM)
    return ContinualModel(detector, text_encoder(), [create_method("finetune"), *methods])


def fake_records(name: str, label_lists: list[list[int]]) -> list[DetectionRecord]:
    """Records without image files (enough for buffer policies): one box per label."""
    return [DetectionRecord(f"/nowhere/{name}_{i}.png", IMAGE_SIZE, IMAGE_SIZE,
                            np.tile([[4.0, 4.0, 30.0, 30.0]], (len(labels), 1)), labels, image_id=i)
            for i, labels in enumerate(label_lists)]


def _draw(path: Path, boxes: np.ndarray, labels: np.ndarray, seed: int) -> None:
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 235, np.uint8)
    image += np.random.default_rng(seed).integers(0, 15, image.shape, dtype=np.uint8)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), COLOURS[int(label) % len(COLOURS)], -1)
    cv2.imwrite(str(path), image)


def _layout(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` non-overlapping boxes of 18-26 px, one per image quadrant."""
    corners = rng.permutation([(2, 2), (34, 2), (2, 34), (34, 34)])[:count]
    sizes = rng.integers(18, 27, size=(count, 2))
    return np.array([[x, y, x + w, y + h] for (x, y), (w, h) in zip(corners, sizes)], np.float32)


def write_task(root: Path, name: str, class_names: tuple[str, ...], num_images: int,
               seed: int = 0) -> DetectionDataset:
    """Draw `num_images` images with one or two boxes of `class_names` each.

    Returns:
        The task's dataset (colours follow label + seed, so tasks with different seeds look different).
    """
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        labels = rng.integers(len(class_names), size=int(rng.integers(1, 3)))
        boxes = _layout(rng, len(labels))
        path = folder / f"{i:03d}.png"
        _draw(path, boxes, labels + seed, seed * 1000 + i)
        records.append(DetectionRecord(str(path), IMAGE_SIZE, IMAGE_SIZE, boxes, labels, image_id=i))
    return DetectionDataset(records, Vocabulary(class_names), source=str(folder))


def write_grounding_json(root: Path, num_images: int = 8, seed: int = 5) -> Path:
    """An MDETR-style json: a caption per image naming its boxes, `tokens_positive` spans per box."""
    folder = Path(root) / "grounding"
    folder.mkdir(parents=True, exist_ok=True)
    colours, shapes = ["red", "blue", "green", "yellow"], ["square", "block", "tile"]
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        picks = [f"{colours[rng.integers(4)]} {shapes[rng.integers(3)]}" for _ in range(int(rng.integers(2, 4)))]
        caption, spans = "a photo of", []
        for phrase in picks:
            caption += " a "
            spans.append([len(caption), len(caption) + len(phrase)])
            caption += phrase + " and"
        caption = caption[:-4] + "."
        boxes = _layout(rng, len(picks))
        _draw(folder / f"{i:03d}.png", boxes, np.arange(len(picks)), seed + i)
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE,
                       "caption": caption})
        for box, span in zip(boxes.tolist(), spans):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": (box[2] - box[0]) * (box[3] - box[1]), "tokens_positive": [span]})
    path = folder / "grounding.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path


def write_coco_json(dataset: DetectionDataset, path: Path) -> Path:
    """The dataset as a COCO instances json (absolute image paths as file names)."""
    images, annotations = [], []
    for record in dataset.records:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": record.image_path, "width": record.width,
                       "height": record.height})
        for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "iscrowd": 0, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(dataset.vocabulary.names)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
