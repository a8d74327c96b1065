"""Configuration of the `mix` method (GQA / grounding / general detection mixing)."""
from __future__ import annotations

from dataclasses import dataclass, field

from cl_detect._config_keys import check_keys_and_types
from cl_detect.data.readers import FORMATS


@dataclass
class MixSource:
    """One dataset mixed into every task.

    Args:
        path: annotation file or dataset folder (anything `read_dataset` reads).
        format: one of coco, lvis, yolo, voc, grounding, odvg; None = guess from the file.
        ratio: share of each epoch's draws taken from this dataset.
        max_images: images used per task, a fresh seeded subset each task (None = all).
        image_root: folder the annotation's image paths are relative to (None = the reader's guess).
    """

    path: str
    format: str | None = None
    ratio: float = 0.2
    max_images: int | None = None
    image_root: str | None = None

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"mix source {self.path}: format must be one of {FORMATS}, got {self.format!r}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"mix source {self.path}: ratio must be in (0, 1), got {self.ratio}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"mix source {self.path}: max_images must be >= 1 or None, got {self.max_images}")


@dataclass
class MixConfig:
    """Fine-tune on each task while sampling grounding or general detection data.

    Args:
        data: the sources, as `MixSource`s or dicts with their fields
            ({path, format, ratio, max_images, image_root}); their ratios must sum below 1.
        seed: seeds the per-task subsets of sources with `max_images`.
    """

    data: list = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        if not self.data:
            raise ValueError("mix needs at least one source in `data` (dicts with path, format, ratio, ...)")
        if not isinstance(self.data, (list, tuple)):  # a string would be read letter by letter
            raise ValueError(f"mix data must be a list of sources (dicts with path, format, ratio, ...), got "
                             f"{self.data!r}; write data: [{{path: ..., ratio: ...}}]")
        self.data = [s if isinstance(s, MixSource) else _source(s, i) for i, s in enumerate(self.data)]
        total = sum(s.ratio for s in self.data)
        if total >= 1:
            raise ValueError(f"mix source ratios sum to {total:.2f}; the task needs a share too, keep it below 1")


def _source(entry: dict, index: int) -> MixSource:
    fields = {"path", "format", "ratio", "max_images", "image_root"}
    if not isinstance(entry, dict) or set(entry) - fields or "path" not in entry:
        raise ValueError(f"a mix source has the keys {sorted(fields)} (path required), got {entry}")
    # a quoted ratio ("0.2") or count failed as a bare TypeError comparing it
    check_keys_and_types(MixSource, entry, f"setting(s) of mix source {index} ({entry['path']}):")
    return MixSource(**entry)
