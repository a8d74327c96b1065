"""Run a detector over a dataset and score it (COCO or LVIS rules).

The prompts are the vocabulary names plus the official blank padding prompt
' ' (its detections are dropped), the images go through the official test
preprocessing, and post-processing keeps 300 detections per image unless asked.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from cl_detect.data.loader import EvalDataset, build_eval_loader
from cl_detect.data.preprocess import images_to_device
from cl_detect.data.records import DetectionDataset, Vocabulary
from cl_detect.models.fuse import compile_for_inference, fused_copy
from cl_detect.models.precision import bf16_autocast
from cl_detect.models.predict import postprocess

PADDING_PROMPT = " "


@torch.no_grad()
def run_detector(detector, text_embeddings: torch.Tensor, dataset: DetectionDataset, image_size: int = 640,
                 batch_size: int = 16, num_workers: int = 0, max_per_img: int = 300, bf16: bool = True,
                 fuse: bool = True, compile: bool = False) -> list[dict]:
    """Detections for every image: dicts with image_id, boxes (xyxy original pixels), scores, labels.

    Args:
        detector: the detector (put in eval mode here, restored afterwards).
        text_embeddings: (N, D) prompts; labels index them.
        dataset: images to run on.
        image_size: letterbox size.
        batch_size: images per forward pass.
        num_workers: loader processes.
        max_per_img: detections kept per image after NMS.
        bf16: autocast on CUDA.
        fuse: run a copy with BatchNorm folded into the convolutions (faster; the detector is untouched).
        compile: run it through torch.compile (`compile_for_inference`): the first batch of
            a new shape compiles (tens of seconds), so it pays off on large sets.
    """
    was_training = detector.training
    detector.eval()
    runner = fused_copy(detector) if fuse else detector
    if compile:
        runner = compile_for_inference(runner, min(batch_size, len(dataset)))
    device = next(detector.parameters()).device
    text = text_embeddings.to(device)[None]
    context = bf16_autocast(device, cuda=bf16)
    loader = build_eval_loader(EvalDataset(dataset, image_size), batch_size, num_workers)
    results = []
    for batch in tqdm(loader, desc="detect", disable=None, leave=False):
        with context:
            out = runner(images_to_device(batch["images"], device), text)
        infos = [meta["letterbox"] for meta in batch["meta"]]
        for image_id, det in zip(batch["image_ids"].tolist(), postprocess(
                out.cls_logits, out.bbox_preds, detector.strides, infos, max_per_img=max_per_img)):
            results.append({"image_id": image_id, "boxes": det.boxes.cpu().numpy(),
                            "scores": det.scores.cpu().numpy(), "labels": det.labels.cpu().numpy()})
    detector.train(was_training)
    return results


def drop_label(detections: list[dict], label: int) -> list[dict]:
    """Remove detections of one label (the padding prompt)."""
    kept = []
    for item in detections:
        keep = item["labels"] != label
        kept.append({**item, "boxes": item["boxes"][keep], "scores": item["scores"][keep],
                     "labels": item["labels"][keep]})
    return kept


def ground_truth(dataset: DetectionDataset) -> tuple[dict, Vocabulary]:
    """The dataset as a COCO dict (category ids 1..K in label order) and the matching vocabulary."""
    from cl_detect.data.writers import coco_dict
    ids = [r.image_id for r in dataset.records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{dataset.source}: image ids are not unique; evaluation needs one id per image")
    root = Path(dataset.image_root or "/")
    gt = coco_dict(dataset, root, root)
    vocabulary = Vocabulary(dataset.vocabulary.names, category_ids=tuple(range(1, len(dataset.vocabulary) + 1)))
    return gt, vocabulary


def evaluate_detector(detector, text_encoder, dataset: DetectionDataset, image_size: int = 640,
                      batch_size: int = 16, protocol: str = "coco", prompts: list[str] | None = None,
                      backend: str = "fast", num_workers: int = 0, fuse: bool = True, compile: bool = False) -> dict:
    """Detect on `dataset` with its vocabulary as prompts and score the result.

    Args:
        detector, text_encoder: the model.
        dataset: test set (its annotations are the ground truth).
        image_size, batch_size, num_workers: inference settings.
        protocol: "coco" (100 dets/img, pycocotools rules), "lvis" (300 dets/img,
            federated rules; `dataset.source` must be the LVIS json, scored on the dataset's
            images only) or "lvis-fixed" (Fixed AP).
        prompts: texts per class (default: the class names).
        backend: COCO backend, "fast" (identical statistics, tested) or "pycocotools".
        fuse: evaluate a BatchNorm-folded copy (pass False when `detector` is already one).
        compile: run the detector compiled (see `run_detector`).

    Returns:
        The evaluator's statistics (AP, AP50, ... and per-category AP).
    """
    names = list(prompts or dataset.vocabulary.names)
    if len(names) != len(dataset.vocabulary):
        raise ValueError(f"{len(names)} prompts for {len(dataset.vocabulary)} classes of {dataset.source}")
    with torch.no_grad():
        embeddings = text_encoder(names + [PADDING_PROMPT])
    max_per_img = 1000 if protocol == "lvis-fixed" else 300
    detections = drop_label(run_detector(detector, embeddings, dataset, image_size, batch_size, num_workers,
                                         max_per_img, fuse=fuse, compile=compile), len(names))
    if protocol == "coco":
        from cl_detect.eval.coco_eval import evaluate_coco
        gt, vocabulary = ground_truth(dataset)
        return evaluate_coco(gt, detections, max_dets=100, backend=backend, vocabulary=vocabulary)
    if protocol in ("lvis", "lvis-fixed"):
        from cl_detect.eval.lvis_eval import evaluate_lvis
        # a subset of the file's images (image_list, max_images) is scored on those images only
        return evaluate_lvis(dataset.source, detections, fixed_ap=protocol == "lvis-fixed",
                             vocabulary=dataset.vocabulary, image_ids=[r.image_id for r in dataset.records])
    raise ValueError(f"protocol must be 'coco', 'lvis' or 'lvis-fixed', got {protocol!r}")

