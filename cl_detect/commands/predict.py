"""`cl-detect predict`: detect objects named by text prompts and draw them.

    cl-detect predict --weights yolo_world_v2_s.pth --texts "person,dog" street.jpg --out vis.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--weights", required=True, help="official YOLO-World v2 checkpoint (or state dict file)")
    parser.add_argument("--texts", required=True, help="comma-separated prompts, e.g. 'person,dog'")
    parser.add_argument("--out", required=True, help="output PNG (one image) or folder (several images)")
    parser.add_argument("--text-encoder", default=None,
                        help="text encoder spec when the checkpoint has none (e.g. 'clip:ViT-B-32:openai')")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--score-thr", type=float, default=0.3, help="only draw/print detections above this")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--compile", action="store_true",
                        help="run the detector compiled by torch.compile (compiles first: worth it for many images)")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def parse_texts(texts: str) -> list[str]:
    """'person, dog' -> ['person', 'dog']; empty entries are an error, not silently dropped."""
    names = [t.strip() for t in texts.split(",")]
    if not names or any(not n for n in names):
        raise SystemExit(f"--texts {texts!r} has an empty prompt; give comma-separated names like 'person,dog'")
    return names


def draw_detections(image_bgr, detections, names: list[str], score_thr: float):
    """Draw boxes with 'name score' labels on a copy of the image."""
    import cv2
    import numpy as np

    canvas = image_bgr.copy()
    for box, score, label in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist()):
        if score < score_thr:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        hsv = np.uint8([[[(37 * label) % 180, 220, 255]]])  # a distinct hue per class
        color = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2)
        cv2.putText(canvas, f"{names[label]} {score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, color, 1, cv2.LINE_AA)
    return canvas


def run(args: argparse.Namespace) -> int:
    import cv2
    import torch

    from cl_detect.data.preprocess import load_image_bgr
    from cl_detect.models.official import load_official_checkpoint

    names = parse_texts(args.texts)
    detector, text_encoder = load_official_checkpoint(args.weights, device=args.device)
    if args.text_encoder:
        from cl_detect.models.text_encoders import create_text_encoder
        text_encoder = create_text_encoder(args.text_encoder).to(args.device)
    if text_encoder is None:
        raise SystemExit(f"{args.weights} carries no text encoder; pass --text-encoder")
    with torch.no_grad():
        embeddings = text_encoder(names + [" "])  # official blank padding class
    images = [load_image_bgr(p) for p in args.images]
    results = detector.predict(images, embeddings, image_size=args.image_size, compile=args.compile)
    out = Path(args.out)
    targets = [out] if len(images) == 1 else [out / (Path(p).stem + "_det.png") for p in args.images]
    for path, image, detections, target in zip(args.images, images, results, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), draw_detections(image, detections, names + [" "], args.score_thr))
        shown = [{"label": names[l], "score": round(s, 4), "box_xyxy": [round(v, 1) for v in b]}
                 for b, s, l in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                    detections.labels.tolist()) if s >= args.score_thr and l < len(names)]
        print(json.dumps({"image": str(path), "out": str(target), "detections": shown}))
    return 0
