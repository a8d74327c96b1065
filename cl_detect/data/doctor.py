"""The dataset doctor: find the silent data problems that make fine-tuning fail quietly.

Class lists that do not match the annotations or the text prompts, a class
list given as one string, box conventions mixed up, boxes outside the image,
broken or resized images: none of these raise in a training loop, the losses
just go to zero. `check_dataset` reports each with the file, the image and
the fix; `DoctorReport.raise_on_errors()` is what training calls before it
starts (it refuses unless the user passes an explicit override).
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cl_detect.data._doctor_boxes import check_boxes, check_class_usage, check_labels
from cl_detect.data._doctor_images import check_images as check_image_files
from cl_detect.data.errors import DatasetError, DatasetFormatError
from cl_detect.data.records import DetectionDataset, Vocabulary

SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Finding:
    """One problem.

    Args:
        severity: 'error' (training must not start) or 'warning'.
        code: stable identifier, e.g. 'boxes_look_like_xywh'.
        message: what is wrong, naming the file and the image / record.
        fix: what to do about it.
    """

    severity: str
    code: str
    message: str
    fix: str = ""


@dataclass
class DoctorReport:
    """Findings for one dataset plus its size."""

    source: str
    findings: list[Finding] = field(default_factory=list)
    num_images: int = 0
    num_boxes: int = 0
    num_classes: int = 0

    def add(self, severity: str, code: str, message: str, fix: str = "") -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        self.findings.append(Finding(severity, code, message, fix))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def format_text(self, max_per_code: int = 5) -> str:
        """Human-readable report; long runs of one code are cut to `max_per_code` examples."""
        lines = [f"dataset doctor: {self.source}",
                 f"  images {self.num_images}, boxes {self.num_boxes}, classes {self.num_classes}"]
        by_code = defaultdict(list)
        for finding in sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity)):
            by_code[(finding.severity, finding.code)].append(finding)
        for (severity, code), findings in by_code.items():
            for finding in findings[:max_per_code]:
                lines.append(f"{severity.upper():7s} [{code}] {finding.message}")
            if len(findings) > max_per_code:
                lines.append(f"{'':7s} [{code}] ... and {len(findings) - max_per_code} more like this")
            if findings[0].fix:
                lines.append(f"{'':7s} fix: {findings[0].fix}")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(lines)

    def raise_on_errors(self) -> None:
        """Raise `DatasetError` with the report when there is any error."""
        if not self.ok:
            raise DatasetError(self.format_text() + "\n(fix the data, or pass the explicit override to train anyway)")


def load_texts(texts: str | Path | list | tuple) -> list[list[str]]:
    """Text prompts as [[name, synonym, ...], ...] from a list or a file.

    A file is a json list (of strings, or of lists like YOLO-World's `texts.json`)
    or plain text with one prompt per line. A UTF-8 byte order mark (Windows editors
    write one) is dropped rather than becoming part of the first prompt.
    """
    if isinstance(texts, (str, Path)):
        path = Path(texts)
        content = path.read_text(encoding="utf-8-sig")
        try:
            texts = json.loads(content) if path.suffix.lower() == ".json" else None
        except json.JSONDecodeError:
            texts = None
        if texts is None:
            texts = [line.strip() for line in content.splitlines() if line.strip()]
    if isinstance(texts, str):
        texts = [texts]
    return [[str(t) for t in item] if isinstance(item, (list, tuple)) else [str(item)] for item in texts]


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def check_vocabulary(vocabulary: Vocabulary, source: str, add) -> None:
    """Names read letter by letter, duplicated names or ids, empty names."""
    names = vocabulary.names
    if len(names) >= 2 and all(len(n) == 1 for n in names):
        add("error", "names_as_string", f"{source}: the class names are single characters {list(names)[:8]}: "
            f"a name given as one string ({''.join(names)!r}) was read letter by letter",
            f"give a list: [{''.join(names)!r}] (YAML: names: ['{''.join(names)}'])")
    for name, count in Counter(_norm(n) for n in names).items():
        if count > 1:
            add("error", "duplicate_class_name", f"{source}: class name {name!r} appears {count} times",
                "merge the duplicated classes or rename one")
    for cid, count in Counter(vocabulary.category_ids).items():
        if count > 1:
            add("error", "duplicate_category_id", f"{source}: category id {cid} is used by {count} categories",
                "give every category its own id")
    for i in [i for i, n in enumerate(names) if not n.strip()]:
        add("error", "empty_class_name", f"{source}: class {i} has an empty name", "name every class")


def check_texts(vocabulary: Vocabulary, texts, source: str, add) -> None:
    """Text prompts must name the classes, one prompt per class, in label order."""
    where = texts if isinstance(texts, (str, Path)) else "the text prompts"
    if isinstance(texts, (str, Path)) and not Path(texts).is_file():
        add("error", "texts_missing", f"texts file {texts} does not exist", "pass the prompt file path")
        return
    prompts = load_texts(texts)
    if len(prompts) >= 2 and all(len(p[0]) == 1 for p in prompts):
        add("error", "names_as_string", f"{where}: the prompts are single characters "
            f"{[p[0] for p in prompts][:8]}: one string was read letter by letter", "give one prompt per class")
        return
    if len(prompts) != len(vocabulary):
        add("error", "text_prompt_mismatch", f"{where} has {len(prompts)} prompts but {source} has "
            f"{len(vocabulary)} classes ({', '.join(vocabulary.names[:5])}{' ...' * (len(vocabulary) > 5)})",
            "write one prompt per class, in the order of the class list")
        return
    synonyms = vocabulary.synonyms or ((),) * len(vocabulary)
    wrong = [(i, prompt[0], name) for i, (prompt, name, extra) in enumerate(zip(prompts, vocabulary.names, synonyms))
             if not {_norm(p) for p in prompt} & {_norm(n) for n in (name, *extra)}]
    if wrong:
        same_set = sorted(_norm(p[0]) for p in prompts) == sorted(_norm(n) for n in vocabulary.names)
        examples = "; ".join(f"label {i}: prompt {p!r} vs class {n!r}" for i, p, n in wrong[:5])
        add("error", "text_prompt_mismatch", f"{where}: {len(wrong)} prompts do not name their class"
            f"{' (same names, different order)' if same_set else ''}: {examples}",
            "reorder / rename the prompts so prompt i names class i")


def check_dataset(src: str | Path | DetectionDataset, texts=None, check_images: bool = True,
                  format: str | None = None, split: str | None = None, **read_kwargs) -> DoctorReport:
    """Run every check on a dataset.

    Args:
        src: a dataset, or anything `read_dataset` accepts.
        texts: optional text prompts (list, or a file: one per line / json list) to compare
            with the class names.
        check_images: open every image (missing / unreadable / truncated / size).
        format, split, **read_kwargs: passed to `read_dataset` when `src` is a path.

    Returns:
        The report; `report.ok` is False when there are errors.
    """
    if not isinstance(src, DetectionDataset):
        from cl_detect.data.readers import read_dataset

        try:
            src = read_dataset(src, format=format, split=split, **read_kwargs)
        except DatasetFormatError as error:
            report = DoctorReport(str(src))
            report.add("error", error.code, str(error))
            return report
    dataset = src
    report = DoctorReport(dataset.source, num_images=len(dataset), num_boxes=dataset.num_boxes,
                          num_classes=len(dataset.vocabulary))
    if not len(dataset):
        report.add("error", "empty_dataset", f"{dataset.source}: no images", "check the path, split and image root")
        return report
    if not dataset.num_boxes:
        report.add("error", "no_boxes", f"{dataset.source}: {len(dataset)} images but no boxes",
                   "check the label files / annotations and the split")
    check_vocabulary(dataset.vocabulary, dataset.source, report.add)
    if texts is not None:
        check_texts(dataset.vocabulary, texts, dataset.source, report.add)
    check_labels(dataset, report.add)
    check_class_usage(dataset, report.add)
    check_boxes(dataset, report.add)
    _check_repeated_images(dataset, report.add)
    _check_orphan_labels(dataset, report.add)
    if check_images:
        check_image_files(dataset, report.add)
    return report


def _check_repeated_images(dataset: DetectionDataset, add) -> None:
    """Detection records should not share an image file. Entries with different boxes split the picture's
    objects (training takes the others' objects as background, evaluation scores their detections as false
    positives): an error. Identical copies only weigh the image twice: a warning. Grounding data repeats an
    image once per caption, which is fine."""
    records_of = defaultdict(list)
    for record in dataset.records:
        if not record.is_grounding:
            records_of[os.path.abspath(record.image_path)].append(record)
    for path, records in records_of.items():
        if len(records) < 2:
            continue
        ids = ", ".join(str(record.image_id) for record in records[:10])
        first = records[0]
        if all(np.array_equal(r.boxes, first.boxes) and np.array_equal(r.labels, first.labels) for r in records):
            add("warning", "repeated_image", f"{path} is listed {len(records)} times with the same boxes (image ids "
                f"{ids}): it counts {len(records)} times in training and evaluation",
                "list each image once (e.g. a YOLO yaml whose train and val name the same folder)")
        else:
            add("error", "repeated_image", f"{path} is listed {len(records)} times (image ids {ids}), with "
                f"different boxes: each entry lacks the others' objects, so the picture trains and is evaluated "
                f"with objects missing", "merge the entries into one image holding all the boxes")


def _check_orphan_labels(dataset: DetectionDataset, add) -> None:
    """YOLO: label files without an image hold boxes no reader can place."""
    if not dataset.source.endswith((".yaml", ".yml")):
        return
    from cl_detect.data.readers._common import list_images
    from cl_detect.data.readers.yolo import label_dir_for, orphan_label_files

    for folder in dict.fromkeys(Path(record.image_path).parent for record in dataset.records):
        try:
            label_dir = label_dir_for(folder, Path(dataset.source).parent)
        except DatasetFormatError:  # a subfolder of unlabelled images: no label files, so no orphans
            continue
        if label_dir == folder:
            continue
        # every image in the folder counts: a .txt split lists a subset, the others' labels are not orphans
        for orphan in orphan_label_files(list_images(folder), label_dir):
            add("warning", "orphan_label_file", f"{orphan}: label file without an image in {folder}; "
                f"its boxes are not read", "restore the image or delete the label file")
