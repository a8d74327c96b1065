"""PASCAL VOC xml -> DetectionDataset.

Reads `Annotations/*.xml` (or `annotations/`, or xml files in the folder
itself) and, when a split is asked for, the ids in `ImageSets/Main/<split>.txt`.
Coordinates are taken as written (no 1-based shift, as mmdetection does);
`difficult` objects become ignore regions, as VOC evaluation treats them.
Objects whose class is not in the given class list keep label -1 so the doctor
reports them instead of losing them.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.readers._common import IMAGE_SUFFIXES, image_size
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary


def _annotation_dir(root: Path) -> Path:
    for name in ("Annotations", "annotations"):
        if (root / name).is_dir():
            return root / name
    return root


def _xml_files(root: Path, split: str | None) -> list[Path]:
    annotation_dir = _annotation_dir(root)
    if split is None:
        files = sorted(annotation_dir.glob("*.xml"))
        if not files:
            raise DatasetFormatError(f"{root}: no .xml files in {annotation_dir}; pass the VOC root folder")
        return files
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetFormatError(f"{root}: split {split!r} asked for but {split_file} does not exist; "
                                 f"pass split=None to read every xml, or add the split file")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    missing = [i for i in ids if not (annotation_dir / f"{i}.xml").is_file()]
    if missing:
        raise DatasetFormatError(f"{split_file}: {len(missing)} listed ids have no xml in {annotation_dir} "
                                 f"(first: {missing[0]}); remove them from the split file or add the xml")
    return [annotation_dir / f"{i}.xml" for i in ids]


def _image_path(root: Path, xml_path: Path, tree: ElementTree.Element) -> Path:
    filename = (tree.findtext("filename") or "").strip() or xml_path.stem + ".jpg"
    folder = (tree.findtext("folder") or "").strip()
    # some tools write the name without its extension ("000005"): try the image suffixes too
    names = [filename] + ([filename + suffix for suffix in IMAGE_SUFFIXES] if not Path(filename).suffix else [])
    candidates = [place / name for place in (root / "JPEGImages", root / "images", xml_path.parent, root / folder, root)
                  for name in names]
    return next((c for c in candidates if c.is_file()), next(c for c in candidates if c.parent.is_dir()))


def _number(element: ElementTree.Element, tag: str, xml_path: Path, default: str, where: str) -> float:
    """The number in `element`'s <tag> (`default` when absent or empty); text that is no number is refused."""
    text = (element.findtext(tag) or "").strip() or default
    try:
        return float(text)
    except ValueError:
        name = tag.split("/")[-1]
        raise DatasetFormatError(f"{xml_path}: {where} has <{name}>{text}</{name}>, not a number; write "
                                 f"sizes and coordinates as plain numbers of pixels") from None


def parse_voc_xml(xml_path: Path, root: Path) -> tuple[dict, list[tuple[str, list[float], bool]]]:
    """One xml -> ({path, width, height}, [(class name, xyxy, difficult), ...])."""
    try:
        tree = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        raise DatasetFormatError(f"{xml_path}: not valid xml ({error}); re-export the annotation") from error
    path = _image_path(root, xml_path, tree)
    width, height = (_number(tree, tag, xml_path, "0", "<size>") for tag in ("size/width", "size/height"))
    if not (math.isfinite(width) and math.isfinite(height)):  # int() of them raised a bare ValueError
        raise DatasetFormatError(f"{xml_path}: <size> has width {width} and height {height}; write them as whole "
                                 f"numbers of pixels, or 0 to read them from the image")
    width, height = int(width), int(height)
    if not width or not height:
        try:
            width, height = image_size(path)
        except OSError:
            width = height = 0
    objects = []
    for obj in tree.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise DatasetFormatError(f"{xml_path}: object {obj.findtext('name')!r} has no <bndbox>; add one")
        where = f"object {obj.findtext('name')!r}"
        coords = [_number(box, tag, xml_path, "nan", where) for tag in ("xmin", "ymin", "xmax", "ymax")]
        # pretty-printed or hand-written xml has `<difficult> 1 </difficult>` or `true`
        difficult = (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")
        objects.append(((obj.findtext("name") or "").strip(), coords, difficult))
    return {"path": str(path), "width": width, "height": height}, objects


def read_voc(src: str | Path, split: str | None = None, class_names: list[str] | None = None) -> DetectionDataset:
    """Read PASCAL VOC xml annotations.

    Args:
        src: the VOC root (with Annotations/, JPEGImages/, ImageSets/Main/) or a folder of
            xml files (raccoon: annotations/ + images/).
        split: name of an ImageSets/Main split file; None reads every xml.
        class_names: the class list in label order; default: sorted names found in the xml.

    Returns:
        The dataset; difficult objects are in `ignore_boxes`.
    """
    root = Path(src)
    parsed = [parse_voc_xml(path, root) for path in _xml_files(root, split)]
    if class_names is None:
        class_names = sorted({name for _, objects in parsed for name, _, _ in objects})
    vocabulary = Vocabulary(tuple(class_names))
    index_of = {name: i for i, name in enumerate(vocabulary.names)}
    records = []
    for image_id, (image, objects) in enumerate(parsed):
        kept = [(index_of.get(name, -1), box) for name, box, difficult in objects if not difficult]
        records.append(DetectionRecord(
            image["path"], image["width"], image["height"], np.array([b for _, b in kept], np.float32),
            np.array([label for label, _ in kept], np.int64), image_id=image_id,
            ignore_boxes=np.array([box for _, box, difficult in objects if difficult], np.float32),
            ignore_labels=np.array([index_of.get(n, -1) for n, _, difficult in objects if difficult], np.int64)))
    image_root = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    return DetectionDataset(records, vocabulary, source=str(root), image_root=str(image_root))
