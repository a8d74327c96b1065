"""`ReplayBuffer`: references to earlier images with their annotations and vocabularies.

The buffer keeps no pixels: an entry is a record (image path, size, boxes,
labels, ignore regions; phrases and caption for grounding records) plus the
class names of the vocabulary its labels index into. Two policies decide what
stays when more images arrive than fit:

- "reservoir": classic reservoir sampling (Vitter's algorithm R) over every
  image ever offered; image n's fate is seeded by (seed, n), so the contents
  depend only on the seed and the stream, and resuming needs no RNG state.
- "class_balanced": every image is admitted, then the buffer is trimmed one
  image at a time from the class held by the most images, preferring the image
  whose rarest class is still common (so the last examples of a rare class stay).

For training, detection entries are relabelled into one merged vocabulary, the
union of the class names of every vocabulary in the buffer (first-seen order):
a replayed image then gets its negative prompts from all earlier tasks'
classes, not only from its own task's few names. Grounding entries keep their
own phrases and go into a second dataset, because a mosaic cannot combine
phrase-labelled and vocabulary-labelled images.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary

POLICIES = ("reservoir", "class_balanced")
NO_BOXES = "<no boxes>"  # the pseudo-class of background images when balancing
_CANDIDATES = 32  # images scored per removal; bounds the cost on large buffers


@dataclass
class BufferEntry:
    """One buffered image.

    Args:
        record: the image's record; labels index into `class_names` (or its phrases).
        class_names: names of the vocabulary the labels index into (empty for grounding).
        arrival: position of the image in the stream of all images offered to the buffer.
    """

    record: DetectionRecord
    class_names: tuple[str, ...]
    arrival: int

    def classes(self) -> frozenset[str]:
        """Names of the classes with a box in this image (`NO_BOXES` when it has none)."""
        names = self.record.phrases if self.record.is_grounding else self.class_names
        present = frozenset(names[i] for i in np.unique(self.record.labels))
        return present or frozenset([NO_BOXES])


class ReplayBuffer:
    """A bounded set of earlier images, filled by a policy.

    Args:
        capacity: most images kept.
        policy: "reservoir" or "class_balanced".
        seed: seeds every random choice of the policy.
    """

    def __init__(self, capacity: int, policy: str = "reservoir", seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.seed = seed
        self.entries: list[BufferEntry] = []
        self.seen = 0  # images offered so far (the reservoir's stream position)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, dataset: DetectionDataset) -> None:
        """Offer every image of `dataset` to the buffer, in order."""
        names = dataset.vocabulary.names
        incoming = [BufferEntry(r.without_unknown_labels(), () if r.is_grounding else names, self.seen + i)
                    for i, r in enumerate(dataset.records)]
        self.seen += len(incoming)
        if self.policy == "reservoir":
            self._reservoir(incoming)
        else:
            self.entries.extend(incoming)
            self._trim_balanced()

    def _reservoir(self, incoming: list[BufferEntry]) -> None:
        for entry in incoming:
            if len(self.entries) < self.capacity:
                self.entries.append(entry)
                continue
            slot = int(np.random.default_rng([self.seed, entry.arrival]).integers(entry.arrival + 1))
            if slot < self.capacity:
                self.entries[slot] = entry

    def _trim_balanced(self) -> None:
        kept = dict(enumerate(self.entries))
        classes = {i: entry.classes() for i, entry in kept.items()}
        holders: dict[str, list[int]] = {}
        for i, names in classes.items():
            for name in names:
                holders.setdefault(name, []).append(i)
        counts = Counter({name: len(ids) for name, ids in holders.items()})
        rng = np.random.default_rng([self.seed, self.seen])
        while len(kept) > self.capacity:
            # the most frequent class (ties: by name, so the result is reproducible)
            largest = max(counts, key=lambda name: (counts[name], name))
            ids = holders[largest]
            picks = rng.choice(len(ids), size=min(_CANDIDATES, len(ids)), replace=False)
            victim_pos = max(picks, key=lambda p: (min(counts[n] for n in classes[ids[p]]), -p))
            victim = ids[victim_pos]
            for name in classes.pop(victim):
                holders[name].remove(victim)
                counts[name] -= 1
            del kept[victim]
        self.entries = [kept[i] for i in sorted(kept)]

    def class_counts(self) -> Counter:
        """Per class name, the number of buffered images that hold it."""
        return Counter(name for entry in self.entries for name in entry.classes() if name != NO_BOXES)

    def merged_vocabulary(self) -> Vocabulary:
        """Union of the class names of every buffered vocabulary, in first-seen order."""
        names = dict.fromkeys(n for entry in self.entries for n in entry.class_names)
        return Vocabulary(tuple(names))

    def datasets(self) -> list[DetectionDataset]:
        """The buffer as training data: detection entries in the merged vocabulary, then grounding entries.

        Empty parts are left out, so the list has zero, one or two datasets.
        """
        vocabulary = self.merged_vocabulary()
        index_of = {name: i for i, name in enumerate(vocabulary.names)}
        detection, grounding = [], []
        for entry in self.entries:
            record = entry.record
            if record.is_grounding:
                grounding.append(record)
                continue
            lookup = np.array([index_of[n] for n in entry.class_names], np.int64)
            # ignore regions keep -1 ("any class"); the others move into the merged vocabulary too
            ignore = np.where(record.ignore_labels >= 0, lookup[record.ignore_labels.clip(0)], -1)
            detection.append(DetectionRecord(**{**vars(record), "labels": lookup[record.labels],
                                                "ignore_labels": ignore}))
        parts = [DetectionDataset(detection, vocabulary, source="replay buffer"),
                 DetectionDataset(grounding, Vocabulary(()), source="replay buffer (grounding)")]
        return [part for part in parts if len(part)]

    def state_dict(self) -> dict:
        """Plain python containers only, so checkpoints load with `weights_only=True`."""
        vocabularies = list(dict.fromkeys(entry.class_names for entry in self.entries))
        vocabulary_index = {names: i for i, names in enumerate(vocabularies)}
        return {"capacity": self.capacity, "policy": self.policy, "seed": self.seed, "seen": self.seen,
                "vocabularies": [list(v) for v in vocabularies],
                "entries": [_entry_to_dict(e, vocabulary_index[e.class_names]) for e in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (capacity, policy and seed included)."""
        self.capacity, self.policy, self.seed, self.seen = (state["capacity"], state["policy"], state["seed"],
                                                            state["seen"])
        vocabularies = [tuple(v) for v in state["vocabularies"]]
        self.entries = [_entry_from_dict(row, vocabularies) for row in state["entries"]]


def _entry_to_dict(entry: BufferEntry, vocabulary: int) -> dict:
    record = entry.record
    return {
        "image_path": record.image_path, "width": record.width, "height": record.height,
        "image_id": record.image_id, "boxes": record.boxes.tolist(), "labels": record.labels.tolist(),
        "ignore_boxes": record.ignore_boxes.tolist(), "ignore_labels": record.ignore_labels.tolist(),
        "phrases": list(record.phrases) if record.is_grounding else None, "caption": record.caption,
        "phrase_spans": [[list(s) for s in spans] for spans in record.phrase_spans] if record.phrase_spans else None,
        "areas": _list_or_none(record.areas), "ignore_areas": _list_or_none(record.ignore_areas),
        "neg_category_ids": list(record.neg_category_ids),
        "not_exhaustive_category_ids": list(record.not_exhaustive_category_ids),
        "vocabulary": vocabulary, "arrival": entry.arrival,
    }


def _list_or_none(values: np.ndarray | None) -> list | None:
    return None if values is None else values.tolist()


def _entry_from_dict(row: dict, vocabularies: list[tuple[str, ...]]) -> BufferEntry:
    spans = row["phrase_spans"]
    record = DetectionRecord(
        row["image_path"], row["width"], row["height"], np.array(row["boxes"], np.float32),
        np.array(row["labels"], np.int64), image_id=row["image_id"],
        ignore_boxes=np.array(row["ignore_boxes"], np.float32), ignore_labels=np.array(row["ignore_labels"]),
        phrases=tuple(row["phrases"]) if row["phrases"] is not None else None, caption=row["caption"],
        phrase_spans=tuple(tuple(tuple(s) for s in group) for group in spans) if spans is not None else None,
        # absent from buffers saved before they were kept
        areas=None if row.get("areas") is None else np.array(row["areas"], np.float64),
        ignore_areas=None if row.get("ignore_areas") is None else np.array(row["ignore_areas"], np.float64),
        neg_category_ids=tuple(row.get("neg_category_ids", ())),
        not_exhaustive_category_ids=tuple(row.get("not_exhaustive_category_ids", ())))
    return BufferEntry(record, vocabularies[row["vocabulary"]], row["arrival"])
