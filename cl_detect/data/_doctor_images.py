"""Doctor checks on image files: missing, unreadable, truncated, size differing from the annotation."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from cl_detect.data.records import DetectionDataset

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


def _jpeg_is_complete(path: Path) -> bool:
    """A JPEG ends with the EOI marker FF D9 (some writers append a few padding bytes)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 64))
        return b"\xff\xd9" in handle.read()


def inspect_image(path: Path) -> tuple[str | None, str, set[tuple[int, int]]]:
    """Open and verify one image cheaply.

    Returns:
        (problem code or None, detail, accepted (width, height) sizes: as stored and
        as shown after EXIF rotation).
    """
    if not path.is_file():
        return "image_missing", "the file does not exist", set()
    try:
        with Image.open(path) as image:
            # verify() must come right after open (Pillow refuses it once e.g. PNG chunks were read)
            size = image.size
            image.verify()
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            if path.suffix.lower() not in _JPEG_SUFFIXES:
                # verify() does not decode; for non-JPEG formats decoding is the only tail check
                image.load()
        if path.suffix.lower() in _JPEG_SUFFIXES and not _jpeg_is_complete(path):
            return "image_truncated", "the JPEG end marker is missing (the file was cut short)", {size}
    except OSError as error:
        code = "image_truncated" if "truncated" in str(error) else "image_unreadable"
        return code, f"{type(error).__name__}: {error}", set()
    except Exception as error:  # PIL raises assorted types (SyntaxError, ValueError) on corrupt headers
        return "image_unreadable", f"{type(error).__name__}: {error}", set()
    sizes = {size}
    if orientation in _TRANSPOSED_ORIENTATIONS:
        sizes.add((size[1], size[0]))
    return None, "", sizes


_FIXES = {
    "image_missing": "restore the file or fix the image root / file_name (readers guess the root; pass image_root)",
    "image_unreadable": "re-download or re-encode the image, or remove its record",
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
        code, detail, sizes = inspect_image(Path(record.image_path))
        name = f"{record.image_path} (image id {record.image_id})"
        if code:
            add("error", code, f"{name}: {detail}", _FIXES[code])
        if sizes and (record.width, record.height) not in sizes:
            actual = " or ".join(f"{w}x{h}" for w, h in sorted(sizes))
            add("error", "image_size_mismatch",
                f"{name}: annotated as {record.width}x{record.height} but the file is {actual}",
                "fix width/height in the annotation (boxes may need rescaling), or restore the original image")
