"""Doctor checks on image files: missing, unreadable, truncated, size differing from the annotation.

Sizes are compared in the displayed frame (EXIF rotation applied), because
that is what `cv2.imread` gives the training path and what COCO annotates.
Pillow opens the files (cheap, header only); an image counts as readable when
OpenCV, which training, evaluation and predict decode with, can read it too.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
from PIL import Image

from cl_detect.data.readers._common import opencv_pixel_limit, oriented_sizes
from cl_detect.data.records import DetectionDataset

_JPEG_SUFFIXES = (".jpg", ".jpeg")
# Pillow opens TIFFs that OpenCV (training, evaluation, predict) cannot decode: float samples, or an
# EXIF orientation of 5-8 (OpenCV 5.0 "Internal imread issue"); these are also read with OpenCV
_OPENCV_CHECKED_SUFFIXES = (".tif", ".tiff")


class ImageCheck(NamedTuple):
    """What `inspect_image` found.

    Args:
        problem: a finding code, or None when the file is fine.
        detail: what is wrong, for the message.
        stored: (width, height) as stored in the file, None when unknown.
        displayed: (width, height) after EXIF rotation (what decoders return), None when unknown.
    """

    problem: str | None
    detail: str
    stored: tuple[int, int] | None
    displayed: tuple[int, int] | None


def _scan_start(handle) -> int:
    """Offset of a JPEG's first entropy-coded scan: the marker segments before it (EXIF with its
    thumbnail, comments) may hold FF D9 bytes of their own, so they are skipped by their lengths."""
    position = 2  # after SOI
    while True:
        handle.seek(position)
        marker = handle.read(4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return position  # no marker where one belongs: search the rest
        if marker[1] == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        position += 2 + int.from_bytes(marker[2:4], "big")
        if marker[1] == 0xDA:  # SOS: its header is done, the scan data starts
            return position


def _jpeg_is_complete(path: Path) -> bool:
    """The JPEG's scan data reaches the EOI marker FF D9.

    Usually the file ends with it (some writers append a few padding bytes); phone photos may
    carry data after it (a motion photo's video, a Samsung trailer), so the scan data is then
    searched (byte stuffing keeps FF D9 out of the entropy-coded data).
    """
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 64))
        if b"\xff\xd9" in handle.read():
            return True
        handle.seek(_scan_start(handle))
        return b"\xff\xd9" in handle.read()


def inspect_image(path: Path) -> ImageCheck:
    """Open and verify one image cheaply; see `ImageCheck` for what comes back."""
    if not path.is_file():
        return ImageCheck("image_missing", "the file does not exist", None, None)
    try:
        with opencv_pixel_limit(), Image.open(path) as image:
            image.verify()  # must come right after open (Pillow refuses it once e.g. PNG chunks were read)
        with opencv_pixel_limit(), Image.open(path) as image:
            stored, displayed = oriented_sizes(image)
            if path.suffix.lower() not in _JPEG_SUFFIXES:
                # verify() does not decode; for non-JPEG formats decoding is the only tail check
                image.load()
        if path.suffix.lower() in _JPEG_SUFFIXES and not _jpeg_is_complete(path):
            return ImageCheck("image_truncated", "the JPEG end marker is missing (the file was cut short)",
                              stored, displayed)
    except OSError as error:
        # Pillow words it "image file is truncated" or "Truncated File Read"
        code = "image_truncated" if "truncated" in str(error).lower() else "image_unreadable"
        return ImageCheck(code, f"{type(error).__name__}: {error}", None, None)
    except Exception as error:  # PIL raises assorted types (SyntaxError, ValueError) on corrupt headers
        return ImageCheck("image_unreadable", f"{type(error).__name__}: {error}", None, None)
    if not cv2.haveImageReader(str(path)):  # reads the signature only
        return ImageCheck("image_unreadable", f"Pillow opens this {image.format} image but OpenCV, which training "
                          "and evaluation read images with, has no decoder for its format", stored, displayed)
    if path.suffix.lower() in _OPENCV_CHECKED_SUFFIXES and cv2.imread(str(path), cv2.IMREAD_COLOR) is None:
        return ImageCheck("image_unreadable", f"Pillow opens this {image.mode} image but OpenCV, which training "
                          "and evaluation read images with, cannot decode it", stored, displayed)
    return ImageCheck(None, "", stored, displayed)


_FIXES = {
    "image_missing": "restore the file or fix the image root / file_name (readers guess the root; pass image_root)",
    "image_unreadable": "re-download or re-encode the image (e.g. as 8-bit PNG), or remove its record",
    "image_truncated": "re-download or re-encode the image (training would read garbage or crash)",
}


def check_images(dataset: DetectionDataset, add) -> None:
    """Report missing, unreadable and truncated images and sizes that differ from the annotation.

    Args:
        dataset: the dataset.
        add: callback `add(severity, code, message, fix)`.
    """
    seen = set()
    for record in dataset.records:
        if record.image_path in seen:
            continue
        seen.add(record.image_path)
        check = inspect_image(Path(record.image_path))
        name = f"{record.image_path} (image id {record.image_id})"
        if check.problem:
            add("error", check.problem, f"{name}: {check.detail}", _FIXES[check.problem])
        if check.displayed:
            _check_size(record.width, record.height, check, name, add)


def _check_size(width: int, height: int, check: ImageCheck, name: str, add) -> None:
    """The annotated size must be the displayed one; the stored one is wrong when EXIF rotates by 90 degrees."""
    if (width, height) == check.displayed:
        return
    if (width, height) == check.stored:
        displayed_w, displayed_h = check.displayed
        add("error", "image_exif_transposed",
            f"{name}: annotated as {width}x{height}, the size stored in the file, but its EXIF orientation "
            f"rotates it by 90 degrees: decoders (and training) load it as {displayed_w}x{displayed_h}, so the "
            f"boxes do not land on the objects",
            "re-save the image without the EXIF orientation tag (keeping the stored pixels), or annotate the "
            "displayed (rotated) frame")
        return
    stored = f" (stored as {check.stored[0]}x{check.stored[1]})" if check.stored != check.displayed else ""
    add("error", "image_size_mismatch",
        f"{name}: annotated as {width}x{height} but the file is {check.displayed[0]}x{check.displayed[1]}{stored}",
        "fix width/height in the annotation (boxes may need rescaling), or restore the original image")
