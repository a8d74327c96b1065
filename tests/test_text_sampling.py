"""Per-image prompt sampling invariants (RandomLoadText semantics)."""
import numpy as np
import pytest

from cl_detect.data.records import Vocabulary
from cl_detect.data.text_sampling import class_texts_of, equal_text_index, eval_texts, sample_texts, unique_phrases

VOCAB = Vocabulary(tuple(f"class {i}" for i in range(120)),
                   synonyms=tuple((f"alias {i}",) for i in range(120)))


@pytest.mark.parametrize("seed", range(10))
def test_positives_present_labels_point_at_names_and_padding(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 120, size=int(rng.integers(0, 12)))
    out = sample_texts(labels, class_texts_of(VOCAB), rng, num_texts=80)
    assert len(out.texts) == 80 and out.keep.all()
    assert [out.texts[i] for i in out.labels] == [VOCAB.names[i] for i in labels]
    positives = {VOCAB.names[i] for i in labels}
    real = [t for t in out.texts if t]
    assert positives <= set(real) and len(real) == len(set(real)) == 80
    negatives = set(real) - positives
    assert not negatives & positives


def test_small_vocabulary_is_padded_with_empty_strings():
    vocab = Vocabulary(("cat", "dog", "bird"))
    out = sample_texts(np.array([2, 2]), class_texts_of(vocab), np.random.default_rng(0), num_texts=6)
    assert sorted(out.texts[:3]) == ["bird", "cat", "dog"] and out.texts[3:] == ["", "", ""]
    assert [out.texts[i] for i in out.labels] == ["bird", "bird"]


def test_more_positives_than_slots_drops_the_unsampled_boxes():
    labels = np.arange(10).repeat(2)
    out = sample_texts(labels, class_texts_of(VOCAB), np.random.default_rng(0), num_texts=4)
    assert out.keep.sum() == 8 and len(out.texts) == 4 and "" not in out.texts
    assert [out.texts[i] for i in out.labels] == [VOCAB.names[i] for i in labels[out.keep]]


def test_synonyms_are_used_only_when_asked():
    labels = np.array([5])
    seen = set()
    for seed in range(20):
        out = sample_texts(labels, class_texts_of(VOCAB), np.random.default_rng(seed), num_texts=3, use_synonyms=True)
        seen.add(out.texts[out.labels[0]])
    assert seen == {"class 5", "alias 5"}
    out = sample_texts(labels, class_texts_of(VOCAB), np.random.default_rng(0), num_texts=3)
    assert out.texts[out.labels[0]] == "class 5"


def test_grounding_negatives_come_from_the_same_image():
    phrases, labels = unique_phrases(("a red car", "the road", "a red car", "a tree"), np.array([2, 0, 3]))
    assert phrases == ("a red car", "the road", "a tree") and labels.tolist() == [0, 0, 2]
    out = sample_texts(labels, [(p,) for p in phrases], np.random.default_rng(0), num_texts=80)
    assert set(out.texts) == {"a red car", "the road", "a tree", ""} and out.texts.count("") == 77
    assert [out.texts[i] for i in out.labels] == ["a red car", "a red car", "a tree"]


def test_same_generator_state_same_prompts():
    a = sample_texts(np.array([1, 7]), class_texts_of(VOCAB), np.random.default_rng(4))
    b = sample_texts(np.array([1, 7]), class_texts_of(VOCAB), np.random.default_rng(4))
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)


def test_eval_texts_are_the_vocabulary_in_order():
    assert eval_texts(Vocabulary(("b", "a"))) == ["b", "a"]


@pytest.mark.parametrize("labels", [[-1, 0], [0, 3]])
def test_labels_outside_the_classes_are_an_error_not_another_class(labels):
    # -1 (a category the vocabulary lacks) once indexed the last class's position
    with pytest.raises(ValueError, match=r"outside the 3 classes.*cl-detect data check"):
        sample_texts(np.array(labels), [("red",), ("green",), ("blue",)], np.random.default_rng(0), 4)


def test_texts_equal_up_to_case_and_spacing_are_one_prompt():
    # "A man" (caption start) and "a  man": one embedding, so two prompts made one box present under
    # one and absent under the other; a mosaic's union of phrase lists meets this all the time
    texts = [("A man",), ("a dog",), ("a  man ",), ("a cat",)]
    for seed in range(10):
        out = sample_texts(np.array([0, 2, 1]), texts, np.random.default_rng(seed), num_texts=6)
        assert sorted(out.texts) == ["", "", "", "A man", "a cat", "a dog"] and out.keep.all()
        assert [out.texts[i] for i in out.labels] == ["A man", "A man", "a dog"]
        absent = sample_texts(np.array([1]), texts, np.random.default_rng(seed), num_texts=6)
        assert sum(t.lower().split() == ["a", "man"] for t in absent.texts) == 1
        # the index a dataset keeps for its fixed vocabulary gives the very same draw
        kept = sample_texts(np.array([0, 2, 1]), texts, np.random.default_rng(seed), num_texts=6,
                            equal_index=equal_text_index(texts))
        assert kept.texts == out.texts and kept.labels.tolist() == out.labels.tolist()


def test_dropping_boxes_for_lack_of_prompts_is_logged(caplog, monkeypatch):
    import cl_detect.data.text_sampling as text_sampling
    monkeypatch.setattr(text_sampling, "_warned_about_dropped_boxes", False)
    with caplog.at_level("WARNING", logger="cl_detect.data.text_sampling"):
        sample_texts(np.arange(3), class_texts_of(VOCAB), np.random.default_rng(0), num_texts=4)
        assert not caplog.records
        sample_texts(np.arange(6), class_texts_of(VOCAB), np.random.default_rng(0), num_texts=4)
        sample_texts(np.arange(6), class_texts_of(VOCAB), np.random.default_rng(0), num_texts=4)
    assert len(caplog.records) == 1 and "6 distinct classes or phrases, more than num_texts = 4" in caplog.text



def test_a_blank_class_name_is_never_a_prompt_and_its_boxes_are_dropped(caplog, monkeypatch):
    # ' ' embeds exactly like the padding prompt '': its boxes were trained present under it and absent
    # under every padding prompt, silently
    import cl_detect.data.text_sampling as text_sampling
    monkeypatch.setattr(text_sampling, "_warned_about_blank_names", False)
    class_texts = class_texts_of(Vocabulary(("dog", " ", "cat")))
    with caplog.at_level("WARNING", logger="cl_detect.data.text_sampling"):
        for seed in range(5):
            out = sample_texts(np.array([1, 0, 1]), class_texts, np.random.default_rng(seed), num_texts=5)
            assert sorted(out.texts) == ["", "", "", "cat", "dog"]
            assert out.keep.tolist() == [False, True, False] and [out.texts[i] for i in out.labels] == ["dog"]
    assert len(caplog.records) == 1 and "classes or phrases [1] have blank names [' ']" in caplog.text
    assert equal_text_index([("a",), ("",), ("A",)]).tolist() == [0, -1, 0]


def test_blank_synonyms_are_never_drawn():
    class_texts = class_texts_of(Vocabulary(("dog",), synonyms=(("", "puppy", "  "),)))
    assert class_texts == [("dog", "puppy")]
    for seed in range(10):
        out = sample_texts(np.array([0]), class_texts, np.random.default_rng(seed), num_texts=3, use_synonyms=True)
        assert out.texts[out.labels[0]] in ("dog", "puppy")
