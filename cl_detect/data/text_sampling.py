"""Per-image text prompts for training, like the official RandomLoadText.

Training: the classes present in the (augmented) image are the positives;
negatives are drawn without replacement from the other classes until there are
`num_texts` prompts (or the candidates run out); the list is shuffled, the box
labels are remapped to positions in it, and it is padded with '' to
`num_texts`. If an image holds more than `num_texts` distinct classes, a random
`num_texts` of them are kept and the boxes of the others are dropped (logged once
per process). Texts that differ only in case or spacing ("A man", "a  man") are one
prompt: the text encoders give them one embedding, so as two prompts one box would
be trained as present under one and absent under the other. The first spelling is used.
A blank name would embed like the padding prompt '', for the same reason: the
boxes of a blank-named class or phrase are dropped (logged once per process), and
blank synonyms are left out.

Grounding records bring their own label space (their phrases): the positives
are the phrases with a box, the negatives the same image's other phrases.

Evaluation: the full vocabulary in label order, so labels need no remapping.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cl_detect.data.records import Vocabulary

PAD_TEXT = ""
logger = logging.getLogger(__name__)
_warned_about_dropped_boxes = False
_warned_about_blank_names = False


@dataclass(frozen=True)
class SampledTexts:
    """Result of sampling prompts for one image.

    Args:
        texts: `num_texts` strings; positions >= the real count hold ''.
        labels: (K',) int64 labels of the kept boxes, as positions in `texts`.
        keep: (K,) bool mask over the input boxes (False only when positives were capped).
    """

    texts: list[str]
    labels: np.ndarray
    keep: np.ndarray


def class_texts_of(vocabulary: Vocabulary) -> list[tuple[str, ...]]:
    """Per class, the name followed by its synonyms (blank ones left out: '' is the padding prompt)."""
    synonyms = vocabulary.synonyms or ((),) * len(vocabulary)
    return [(name, *(s for s in extra if s != name and s.strip())) for name, extra in zip(vocabulary.names, synonyms)]


def unique_phrases(phrases: tuple[str, ...], labels: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Merge identical phrase strings so a positive never reappears as a negative.

    Args:
        phrases: a grounding record's phrases (may repeat, e.g. two spans of "a dog").
        labels: (K,) indices into `phrases`.

    Returns:
        The unique phrases in first-seen order and the labels remapped to them.
    """
    index: dict[str, int] = {}
    lookup = np.array([index.setdefault(p, len(index)) for p in phrases], np.int64)
    return tuple(index), (lookup[labels] if len(labels) else labels.astype(np.int64))


def sample_texts(labels: np.ndarray, class_texts: list[tuple[str, ...]], rng: np.random.Generator,
                 num_texts: int = 80, use_synonyms: bool = False, equal_index: np.ndarray | None = None
                 ) -> SampledTexts:
    """Sample the prompt list of one training image.

    Args:
        labels: (K,) class indices of the image's boxes, into `class_texts`.
        class_texts: per class, its name(s): `class_texts_of(vocabulary)` for
            detection data, `[(p,) for p in phrases]` for grounding data.
        rng: randomness source.
        num_texts: prompts per image after padding (the official 80).
        use_synonyms: pick a random name among each class's names instead of the first.
        equal_index: `equal_text_index(class_texts)`, when the caller keeps it for a fixed
            vocabulary (it costs 0.6 ms per call for LVIS's 1,203 classes); computed if None.

    Returns:
        The padded prompts, the remapped labels and the keep mask over the boxes.
    """
    labels = np.asarray(labels, np.int64)
    outside = labels[(labels < 0) | (labels >= len(class_texts))]
    if len(outside):
        raise ValueError(f"box labels {sorted(set(outside.tolist()))} are outside the {len(class_texts)} classes "
                         f"(-1: a category the vocabulary does not have); run `cl-detect data check` and fix or "
                         f"remove those boxes")
    first_of = equal_text_index(class_texts) if equal_index is None else equal_index
    labels = first_of[labels]
    if (labels < 0).any():
        _log_blank_names(class_texts, first_of)
    positives = np.unique(labels[labels >= 0])
    if len(positives) > num_texts:
        _log_dropped_boxes(len(positives), num_texts)
        positives = np.sort(rng.choice(positives, size=num_texts, replace=False))
    keep = np.isin(labels, positives)

    candidates = np.setdiff1d(np.unique(first_of[first_of >= 0]), positives)
    num_negatives = min(num_texts - len(positives), len(candidates))
    negatives = rng.choice(candidates, size=num_negatives, replace=False) if num_negatives else candidates[:0]
    chosen = np.concatenate([positives, negatives]).astype(np.int64)
    rng.shuffle(chosen)

    position = np.full(len(class_texts), -1, np.int64)
    position[chosen] = np.arange(len(chosen))
    if use_synonyms:
        texts = [names[rng.integers(len(names))] for names in (class_texts[c] for c in chosen)]
    else:
        texts = [class_texts[c][0] for c in chosen]
    texts += [PAD_TEXT] * (num_texts - len(texts))
    return SampledTexts(texts=texts, labels=position[labels[keep]], keep=keep)


def equal_text_index(class_texts: list[tuple[str, ...]]) -> np.ndarray:
    """Per class, the first class whose name is the same up to case and spacing (itself when unique);
    -1 for a blank name, which no prompt can stand for (`sample_texts` drops its boxes)."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(key, i) if (key := " ".join(names[0].lower().split())) else -1
                     for i, names in enumerate(class_texts)], np.int64)


def _log_blank_names(class_texts: list[tuple[str, ...]], first_of: np.ndarray) -> None:
    global _warned_about_blank_names
    if not _warned_about_blank_names:
        _warned_about_blank_names = True
        blank = np.flatnonzero(first_of < 0).tolist()
        logger.warning("classes or phrases %s have blank names %s: a blank prompt embeds like the padding prompt '', "
                       "so their boxes are dropped from training (said once; name them in the dataset, "
                       "`cl-detect data check` lists them)", blank[:10], [class_texts[i][0] for i in blank[:3]])


def _log_dropped_boxes(num_positives: int, num_texts: int) -> None:
    global _warned_about_dropped_boxes
    if not _warned_about_dropped_boxes:
        _warned_about_dropped_boxes = True
        logger.warning("a training image holds %d distinct classes or phrases, more than num_texts = %d prompts: "
                    "the boxes of the %d left out are dropped from it (said once; raise train.num_texts to keep "
                    "them)", num_positives, num_texts, num_positives - num_texts)


def eval_texts(vocabulary: Vocabulary) -> list[str]:
    """Evaluation prompts: every class name in label order (labels stay as they are)."""
    return list(vocabulary.names)
