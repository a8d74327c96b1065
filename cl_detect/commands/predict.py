"""`cl-detect predict`: detect objects named by text prompts and draw them.

    cl-detect predict --weights yolo_world_v2_s.pth --texts "person,dog" street.jpg --out vis.png
    cl-detect predict --weights finetuned.pt --texts prompts.txt a/*.jpg b/*.jpg --out vis/
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from cl_detect.commands._arguments import positive_int

IMAGE_SUFFIXES = ".png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--weights", required=True,
                        help="a cl_detect checkpoint (what pretrain/finetune write) or an official YOLO-World v2 one")
    parser.add_argument("--texts", required=True,
                        help="comma-separated prompts, e.g. 'person,dog', or a prompt file: one prompt per line "
                             "(blank lines skipped) or a .json list of strings, as `data check --texts` reads; "
                             "a prompt with a comma in it needs a file")
    parser.add_argument("--out", required=True,
                        help=f"one image: an output image file ({IMAGE_SUFFIXES}) or a folder (existing, or "
                             "ending in '/') that gets <name>_det.png; several images: a folder that gets "
                             "<name>_det.png each, inputs sharing a name (a/x.png, b/x.png) with their "
                             "folder's in front (a_x_det.png, b_x_det.png)")
    parser.add_argument("--text-encoder", default=None,
                        help="text encoder spec, replacing the checkpoint's (e.g. 'clip:ViT-B-32:openai')")
    parser.add_argument("--image-size", type=positive_int, default=640,
                        help="images are letterboxed to this square size (a multiple of 32)")
    parser.add_argument("--score-thr", type=_score, default=0.3,
                        help="only draw/print detections scoring this or more (0 to 1; the official "
                             "post-processing keeps none at 0.001 or less)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or auto (default: auto, cuda when available, else cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="run the detector compiled by torch.compile (compiles first: worth it for many images)")


def _score(text: str) -> float:
    """A score threshold in [0, 1]: 30 (a percentage) drew and printed nothing, silently."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a score in [0, 1] (scores are sigmoid probabilities)")
    return value


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _checked_device(device: str) -> str:
    """`--device` when it names a device this machine has; torch failed after the model had loaded
    ("Found no NVIDIA driver", "Expected one of cpu, cuda, ... device type")."""
    from cl_detect.engine.config import check_device_available, check_device_name

    check_device_name(device, "--device")
    check_device_available(device, "--device", "`cl-detect predict --device cpu`")
    return device


def parse_texts(texts: str) -> list[str]:
    """'person, dog' -> ['person', 'dog'], or the prompts of the file `texts` names.

    A file is read by `load_texts`, as `data check --texts` reads it (the first name of
    each json entry with synonyms). Empty prompts are an error, not silently dropped.
    """
    path = Path(texts)
    if path.is_file():
        from cl_detect.data.doctor import load_texts
        names = [item[0].strip() if item else "" for item in load_texts(path)]
        if not names or any(not n for n in names):
            raise SystemExit(f"--texts file {path} has no prompts or an empty one; write one prompt per line "
                             "or a .json list of non-empty strings")
        return names
    if path.suffix.lower() in (".txt", ".json"):
        raise SystemExit(f"--texts {texts!r} looks like a prompt file but there is no such file; "
                         "check the path, or give comma-separated names like 'person,dog'")
    names = [t.strip() for t in texts.split(",")]
    if not names or any(not n for n in names):
        raise SystemExit(f"--texts {texts!r} has an empty prompt; give comma-separated names like 'person,dog'")
    return names


def _check_inputs(images: list[str]) -> None:
    """Every input is a file of an image type OpenCV reads, checked before the model loads (seconds for
    the large sizes): a typo, a folder or a text file was found only when its batch was read, after the
    batches before it had been computed and, with nothing drawn yet, lost."""
    import cv2

    for path in map(Path, images):
        if path.is_dir():
            raise SystemExit(f"input {path} is a folder; give its image files, e.g. {path / '*.jpg'}")
        if not path.is_file():
            raise SystemExit(f"input image {path} does not exist")
        if not cv2.haveImageReader(str(path)):  # reads the file's signature only
            raise SystemExit(f"input {path} is not an image OpenCV can read (types: {IMAGE_SUFFIXES}); "
                             "convert it or leave it out")


def _output_names(images: list[str]) -> list[str]:
    """'<stem>_det.png' per image; inputs sharing a stem get their folder's name in front."""
    stems = [Path(p).stem for p in images]
    repeated = {stem for stem, count in Counter(stems).items() if count > 1}
    names = [f"{Path(p).resolve().parent.name}_{stem}" if stem in repeated else stem
             for p, stem in zip(images, stems)]
    clashes = sorted(name for name, count in Counter(names).items() if count > 1)
    if clashes:  # the same folder name as well, x.png beside x.jpg, or one file given twice
        same = [p for p, name in zip(images, names) if name == clashes[0]]
        raise SystemExit(f"inputs {same} would all be written as {clashes[0]}_det.png; "
                         "give them in separate runs or rename them")
    return [f"{name}_det.png" for name in names]


def output_paths(out: str, images: list[str]) -> list[Path]:
    """Where each drawn image goes (see --out), checked before any work is done; never over an input."""
    targets = _targets(out, images)
    inputs = {Path(p).resolve() for p in images}
    overwritten = [str(t) for t in targets if t.resolve() in inputs]
    if overwritten:
        raise SystemExit(f"--out would write over the input image {overwritten[0]}; give another file name or folder")
    return targets


def _targets(out: str, images: list[str]) -> list[Path]:
    """The paths `--out` names for `images` (one file, or a folder of <name>_det.png)."""
    import cv2

    folder = Path(out)
    if len(images) == 1 and not folder.is_dir() and not out.endswith(("/", os.sep)):
        if not cv2.haveImageWriter(out):
            raise SystemExit(f"--out {out!r} is neither an image file ({IMAGE_SUFFIXES}) nor a folder; give "
                             "e.g. --out vis.png, or an existing folder (or one ending in '/') for <name>_det.png")
        return [folder]
    if folder.is_file() or (not folder.is_dir() and cv2.haveImageWriter(out)):
        what = "an existing file" if folder.is_file() else "an image file name"
        raise SystemExit(f"--out {out!r} is {what}, but {len(images)} images were given; "
                         "give a folder for their <name>_det.png files")
    return [folder / name for name in _output_names(images)]


def write_image(target: Path, image) -> None:
    """cv2.imwrite that fails loudly: it returns False instead of raising."""
    import cv2

    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), image):
        raise SystemExit(f"could not write {target}: check that its folder is writable and the name is "
                         f"not a folder; image types: {IMAGE_SUFFIXES}")


def shown_detections(detections, names: list[str], score_thr: float):
    """(box, score, label) of the detections at or above `score_thr` of the user's classes.

    Labels from len(names) on are the blank padding prompt appended after the user's; not shown.
    """
    return [(box, score, label) for box, score, label in zip(
        detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist())
        if score >= score_thr and label < len(names)]


def draw_detections(image_bgr, detections, names: list[str], score_thr: float):
    """Draw boxes with 'name score' labels on a copy of the image, for the classes in `names` only."""
    import cv2
    import numpy as np

    canvas = image_bgr.copy()
    for box, score, label in shown_detections(detections, names, score_thr):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        hsv = np.uint8([[[(37 * label) % 180, 220, 255]]])  # a distinct hue per class
        color = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2)
        cv2.putText(canvas, f"{names[label]} {score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, color, 1, cv2.LINE_AA)
    return canvas


def run(args: argparse.Namespace) -> int:
    import torch

    from cl_detect._config_keys import check_image_size
    from cl_detect.data.preprocess import load_image_bgr
    from cl_detect.models.checkpoint import load_model
    from cl_detect.models.official import FixedTextEmbeddings

    check_image_size(args.image_size)  # before loading the model, which takes a while for the large sizes
    device = _default_device() if args.device in (None, "auto") else _checked_device(args.device)
    names = parse_texts(args.texts)
    targets = output_paths(args.out, args.images)
    _check_inputs(args.images)
    detector, text_encoder = load_model(args.weights, device=device,
                                        text_encoder_spec=args.text_encoder)
    if text_encoder is None:
        raise SystemExit(f"{args.weights} carries no text encoder; pass --text-encoder")
    # the official blank padding class; a prompt-tuned checkpoint's class embeddings come without one
    prompts = names if isinstance(text_encoder, FixedTextEmbeddings) else names + [" "]
    with torch.no_grad():
        embeddings = text_encoder(prompts)
    # paths, not decoded images: predict reads one batch at a time, so memory does not grow with the
    # number of inputs (all of them decoded at once took 36 MB per 12-megapixel photo); each is read
    # again to draw on
    results = detector.predict(list(args.images), embeddings, image_size=args.image_size, compile=args.compile)
    for path, detections, target in zip(args.images, results, targets):
        write_image(target, draw_detections(load_image_bgr(path), detections, names, args.score_thr))
        shown = [{"label": names[label], "score": round(score, 4), "box_xyxy": [round(v, 1) for v in box]}
                 for box, score, label in shown_detections(detections, names, args.score_thr)]
        print(json.dumps({"image": str(path), "out": str(target), "detections": shown}))
    return 0
