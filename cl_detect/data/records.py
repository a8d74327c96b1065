"""The one record type every reader produces and every loader consumes.

A `DetectionRecord` is one image with its boxes in absolute xyxy pixels and
labels that index into a `Vocabulary` (the dataset's class names, in order).
Grounding records carry their own per-image vocabulary (`phrases`) and the
caption the phrases come from, with character spans.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Vocabulary:
    """Class names of a dataset, in label order.

    Args:
        names: one name per class; label i means `names[i]`.
        synonyms: per class, extra names (may be empty tuples).
        category_ids: per class, the id used by the source annotation file
            (COCO 1..90, LVIS 1..1203); evaluation maps labels back through it.
        frequency: per class, LVIS frequency group 'r', 'c' or 'f' (empty if unknown).
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...] = ()
    category_ids: tuple[int, ...] = ()
    frequency: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.names, str):
            raise ValueError(
                f"class names must be a list of names, got the single string {self.names!r}; "
                f"write ({self.names!r},) or [{self.names!r}] (a string is read letter by letter)")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "synonyms", tuple(tuple(s) for s in self.synonyms))
        if not self.category_ids:
            object.__setattr__(self, "category_ids", tuple(range(1, len(self.names) + 1)))
        object.__setattr__(self, "category_ids", tuple(int(i) for i in self.category_ids))
        object.__setattr__(self, "frequency", tuple(self.frequency))
        for attr in ("synonyms", "category_ids", "frequency"):
            value = getattr(self, attr)
            if value and len(value) != len(self.names):
                raise ValueError(f"Vocabulary.{attr} has {len(value)} entries for {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.names)

    def index_of_category_id(self) -> dict[int, int]:
        """Map source category id -> label index."""
        return {cid: i for i, cid in enumerate(self.category_ids)}


@dataclass
class DetectionRecord:
    """One annotated image.

    Args:
        image_path: absolute path of the image file.
        width, height: image size in pixels as annotated.
        boxes: (K, 4) float32 xyxy in pixels.
        labels: (K,) int64 indices into the vocabulary (or into `phrases`).
        image_id: id in the source annotation file (COCO/LVIS image id).
        ignore_boxes: (M, 4) crowd / ignore regions, xyxy pixels (not trained on, ignored in eval).
        phrases: grounding only: the per-image texts that `labels` index into.
        caption: grounding only: the caption the phrases come from.
        phrase_spans: grounding only: per phrase, the (start, end) character spans in `caption`.
        neg_category_ids: LVIS: categories verified absent from the image.
        not_exhaustive_category_ids: LVIS: categories not exhaustively annotated.
        ignore_labels: (M,) class of each ignore region (-1 when unknown); kept so a crowd
            region written back to COCO json still ignores only its own class in evaluation.
        areas, ignore_areas: (K,) / (M,) the annotated areas (COCO's `area`: the segmentation's,
            which is what COCO evaluation sorts into small / medium / large); NaN where the
            source gave none; None when no source area is known. Where unknown, the box area
            w*h stands in.
    """

    image_path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int = 0
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    phrases: tuple[str, ...] | None = None
    caption: str | None = None
    phrase_spans: tuple[tuple[tuple[int, int], ...], ...] | None = None
    neg_category_ids: tuple[int, ...] = ()
    not_exhaustive_category_ids: tuple[int, ...] = ()
    ignore_labels: np.ndarray | None = None
    areas: np.ndarray | None = None
    ignore_areas: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore_boxes = np.asarray(self.ignore_boxes, dtype=np.float32).reshape(-1, 4)
        if self.ignore_labels is None:
            self.ignore_labels = np.full(len(self.ignore_boxes), -1, np.int64)
        self.ignore_labels = np.asarray(self.ignore_labels, dtype=np.int64).reshape(-1)
        if len(self.ignore_labels) != len(self.ignore_boxes):
            raise ValueError(f"{self.image_path}: {len(self.ignore_boxes)} ignore boxes but "
                             f"{len(self.ignore_labels)} ignore labels")
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{self.image_path}: {len(self.boxes)} boxes but {len(self.labels)} labels")
        for name, boxes in (("areas", self.boxes), ("ignore_areas", self.ignore_boxes)):
            areas = getattr(self, name)
            if areas is not None:
                areas = np.asarray(areas, dtype=np.float64).reshape(-1)
                if len(areas) != len(boxes):
                    raise ValueError(f"{self.image_path}: {len(boxes)} boxes but {len(areas)} {name}")
                setattr(self, name, areas)

    def keep_boxes(self, keep: np.ndarray) -> "DetectionRecord":
        """A copy with only the boxes where `keep` is True, with their labels and areas."""
        areas = self.areas[keep] if self.areas is not None else None
        return dataclasses.replace(self, boxes=self.boxes[keep], labels=self.labels[keep], areas=areas)

    def without_unknown_labels(self, num_classes: int | None = None) -> "DetectionRecord":
        """Itself, or a copy without the boxes no prompt can name: label -1 (a category the class list
        lacks) and, when `num_classes` is given, labels past it (a grounding record: past its phrases)."""
        limit = len(self.phrases) if self.is_grounding else num_classes
        keep = self.labels >= 0
        if limit is not None:
            keep &= self.labels < limit
        return self if keep.all() else self.keep_boxes(keep)

    @property
    def is_grounding(self) -> bool:
        return self.phrases is not None


@dataclass
class DetectionDataset:
    """Records plus the vocabulary their labels index into.

    Args:
        records: the images.
        vocabulary: class names (for grounding data: empty; each record has phrases).
        source: where it was read from (file or folder), for error messages.
        image_root: folder that image paths are relative to when written back out.
    """

    records: list[DetectionRecord]
    vocabulary: Vocabulary
    source: str = ""
    image_root: str = ""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.boxes) for r in self.records))
