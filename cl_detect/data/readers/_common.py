"""Helpers shared by the readers: cheap image sizes, json loading, merging splits."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
import threading
import warnings

from PIL import Image

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.records import DetectionDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# EXIF orientations 5-8 rotate by 90 degrees: the decoded image has width and height swapped
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# cv2.imread, which training, evaluation and predict decode with, reads images of up to this many
# pixels (its default, or the environment's setting)
OPENCV_MAX_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 2**30))


_pixel_limit_lock = threading.Lock()
_pixel_limit_users = [0, None]  # open uses, and Pillow's limit before the first


@contextlib.contextmanager
def opencv_pixel_limit():
    """Within it Pillow opens every image `cv2.imread` reads: its decompression-bomb check refuses
    more than 2 * Image.MAX_IMAGE_PIXELS (179 M pixels by default), which large aerial or scanned
    images exceed, so that limit is moved to OpenCV's and restored when the last user leaves (the
    limit is Pillow's global; overlapping uses in threads restore the value from before the first)."""
    with _pixel_limit_lock:
        if _pixel_limit_users[0] == 0:
            _pixel_limit_users[1] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = OPENCV_MAX_PIXELS // 2  # Pillow raises above twice this
        _pixel_limit_users[0] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        with _pixel_limit_lock:
            _pixel_limit_users[0] -= 1
            if _pixel_limit_users[0] == 0:
                Image.MAX_IMAGE_PIXELS = _pixel_limit_users[1]


def opencv_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 = none) that `cv2.imread` applies to an image open in Pillow.

    OpenCV reads it from the EXIF block only (JPEG APP1, PNG eXIf, WebP EXIF, TIFF tags). Pillow's
    `getexif()` also takes it from XMP metadata and from a PNG's "Raw profile type exif" text, as
    ImageMagick writes it; OpenCV ignores both and loads such an image as stored.
    """
    exif = image.getexif()  # for a PNG this also reads an eXIf chunk that follows the pixel data
    if image.format == "TIFF":
        return exif.get(0x0112, 1)
    block = Image.Exif()
    if image.info.get("exif"):
        block.load(image.info["exif"])
    return block.get(0x0112, 1)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as decoders see it (EXIF rotation applied), read from the header only.

    Raises:
        FileNotFoundError / OSError when the file is missing or not an image.
    """
    with opencv_pixel_limit(), Image.open(path) as image:
        return oriented_sizes(image)[1]


def oriented_sizes(image: Image.Image) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stored, displayed) (width, height) of an open image; an EXIF orientation of 5-8 swaps them
    (the orientation `cv2.imread` applies: `opencv_orientation`).

    Pillow's TIFF reader reports the displayed size already, its other readers the stored one.
    """
    size = image.size
    if opencv_orientation(image) not in _TRANSPOSED_ORIENTATIONS:
        return size, size
    swapped = (size[1], size[0])
    return (swapped, size) if image.format == "TIFF" else (size, swapped)


def load_json(path: str | Path):
    """Load a json file, turning a syntax error into a message that names the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid json ({error}); re-export the annotation file") from error


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def merge_datasets(datasets: list[DetectionDataset], source: str) -> DetectionDataset:
    """Concatenate splits that share one vocabulary (e.g. train + val of one dataset); image ids are
    renumbered 1..N when two splits use the same id."""
    first = datasets[0]
    for other in datasets[1:]:
        if other.vocabulary.names != first.vocabulary.names:
            raise DatasetFormatError(
                f"{source}: splits {first.source} and {other.source} have different class lists; "
                f"read them one at a time with split=...")
    records = [record for dataset in datasets for record in dataset.records]
    if len({record.image_id for record in records}) < len(records):
        # splits number their images independently (a Roboflow export starts each at 0), and evaluation
        # and written files key on the id: renumber the freshly read records
        for number, record in enumerate(records, 1):
            record.image_id = number
    roots = [Path(d.image_root) for d in datasets if d.image_root]
    image_root = str(_common_folder(roots)) if roots else ""
    return DetectionDataset(records, first.vocabulary, source=source, image_root=image_root)


def _common_folder(paths: list[Path]) -> Path:
    common = paths[0].resolve()
    for path in paths[1:]:
        path = path.resolve()
        while common != common.parent and not path.is_relative_to(common):
            common = common.parent
    return common
