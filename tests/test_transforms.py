"""Training transforms keep boxes on the drawn rectangles; the training letterbox equals evaluation's."""
import numpy as np
import pytest

from cl_detect.data.augment import Sample, box_keep_mask, horizontal_flip, hsv_jitter, letterbox_sample, random_affine
from cl_detect.data.mosaic import mosaic4
from cl_detect.data.preprocess import PAD_VALUE, letterbox
from cl_detect.data.transforms import AugmentConfig, TrainAugment

from _drawn_boxes import assert_boxes_match_pixels, colour_mask, draw_image


def _sample(height=96, width=128, boxes=((20, 16, 60, 70), (80, 30, 110, 60)), labels=(0, 1), image_id=1):
    boxes = np.array(boxes, np.float32)
    labels = np.array(labels, np.int64)
    return Sample(draw_image(height, width, boxes, labels), boxes, labels, image_id=image_id)


def test_horizontal_flip_moves_boxes_with_pixels():
    flipped = horizontal_flip(_sample())
    np.testing.assert_allclose(flipped.boxes[0], [128 - 60, 16, 128 - 20, 70])
    assert_boxes_match_pixels(flipped.image, flipped.boxes, flipped.labels, tolerance=0)


@pytest.mark.parametrize("seed", range(6))
def test_random_affine_boxes_enclose_rectangles(seed):
    sample = _sample()
    sample.ignore_boxes = np.array([[20, 16, 60, 70]], np.float32)
    out = random_affine(sample, 128, np.random.default_rng(seed), scale_range=(0.5, 1.5), max_translate=0.1,
                        min_box_size=0, min_area_ratio=0, max_aspect_ratio=np.inf)
    assert out.image.shape == (128, 128, 3)
    assert_boxes_match_pixels(out.image, out.boxes, out.labels)
    # the ignore region went through the same geometry as the identical box
    if len(out.ignore_boxes) and (out.labels == 0).any():
        np.testing.assert_allclose(out.ignore_boxes[0], out.boxes[out.labels == 0][0], atol=1e-4)
    # a box that vanished has no pixels left
    for label in set([0, 1]) - set(out.labels.tolist()):
        assert colour_mask(out.image, label).sum() == 0


def test_random_affine_fills_border_with_114():
    out = random_affine(_sample(), 256, np.random.default_rng(0), scale_range=(0.5, 0.5), max_translate=0.0)
    assert (out.image[0, 0] == PAD_VALUE).all() and (out.image[-1, -1] == PAD_VALUE).all()


def test_box_filter_rule():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 1.5]], np.float32)
    after = np.array([[0, 0, 10, 10],     # whole box kept
                      [0, 0, 10, 0.5],    # 5% of its area left: dropped (min_area_ratio 0.1)
                      [0, 0, 1.5, 10],    # 1.5 px wide: dropped (min_box_size 2)
                      [0, 0, 100, 2.5]], np.float32)  # aspect 40: kept at 100, dropped at 20
    keep = box_keep_mask(before, after, 1.0, 2.0, 0.1, 100.0)
    assert keep.tolist() == [True, False, False, True]
    assert not box_keep_mask(before[3:], after[3:], 1.0, 2.0, 0.1, 20.0)[0]


def test_mosaic_places_four_images_and_clips_boxes():
    sizes = [(96, 128), (128, 96), (80, 80), (128, 64)]
    samples = [_sample(h, w, boxes=((12, 12, w - 12, h - 12),), labels=(i,), image_id=i + 1)
               for i, (h, w) in enumerate(sizes)]
    for seed in range(5):
        out = mosaic4(samples, 128, np.random.default_rng(seed))
        assert out.image.shape == (256, 256, 3) and out.image_id == 1
        assert (out.boxes[:, [0, 1]] >= 0).all() and (out.boxes[:, [2, 3]] <= 256).all()
        assert_boxes_match_pixels(out.image, out.boxes, out.labels)
        for label in set(range(4)) - set(out.labels.tolist()):
            assert colour_mask(out.image, label).sum() == 0


def test_mosaic_merges_grounding_phrases():
    samples = [_sample(boxes=((12, 12, 40, 40),), labels=(0,)) for _ in range(4)]
    phrases = [("a cat", "a dog"), ("a dog",), ("a bird", "a cat"), ("a cat",)]
    for sample, texts in zip(samples, phrases):
        sample.texts = texts
        sample.labels = np.array([len(texts) - 1])
    out = mosaic4(samples, 128, np.random.default_rng(0))
    assert out.texts == ("a cat", "a dog", "a bird")
    expected = {"a dog", "a cat"}
    assert {out.texts[label] for label in out.labels} <= expected and len(out.labels) >= 1
    samples[0].texts = None
    with pytest.raises(ValueError, match="grounding"):
        mosaic4(samples, 128, np.random.default_rng(0))


def test_no_augmentation_equals_eval_letterbox():
    sample = _sample(80, 120)
    augment = TrainAugment(AugmentConfig.no_augmentation(128))
    out = augment([sample], np.random.default_rng(0))
    expected, info = letterbox(sample.image, 128)
    np.testing.assert_array_equal(out.image, expected)
    np.testing.assert_allclose(out.boxes[:, 0], sample.boxes[:, 0] * info.scale[0] + info.pad_left, rtol=1e-6)
    np.testing.assert_allclose(out.boxes[:, 1], sample.boxes[:, 1] * info.scale[1] + info.pad_top, rtol=1e-6)
    assert_boxes_match_pixels(out.image, out.boxes, out.labels, tolerance=1.0)


def test_no_augmentation_clips_boxes_spilling_past_the_image():
    # a box 1% past the right border (the doctor tolerates it) came out at x2 > S; mmyolo's LetterResize
    # clips to the image as the affine and the mosaic do
    sample = _sample(64, 128, boxes=((100, 10, 129.3, 30), (10, 10, 40, 30)), labels=(0, 1))
    sample.ignore_boxes = np.array([[100, 10, 129.3, 30]], np.float32)
    out = TrainAugment(AugmentConfig.no_augmentation(128))([sample], np.random.default_rng(0))
    assert out.labels.tolist() == [0, 1]
    np.testing.assert_allclose(out.boxes[0, [0, 2]], [100, 128])
    np.testing.assert_allclose(out.ignore_boxes[0, [0, 2]], [100, 128])


@pytest.mark.parametrize("mosaic", [True, False])
def test_full_recipe_is_deterministic_and_consistent(mosaic):
    config = AugmentConfig(image_size=128, mosaic=mosaic, hsv_gains=(0, 0, 0), flip_prob=0.5)
    augment = TrainAugment(config)
    samples = [_sample(image_id=i) for i in range(4 if mosaic else 1)]
    first = augment(samples, np.random.default_rng(3))
    again = augment(samples, np.random.default_rng(3))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    assert first.image.shape == (128, 128, 3)
    if len(first.boxes):
        assert_boxes_match_pixels(first.image, first.boxes, first.labels)


def test_hsv_jitter_changes_colour_not_geometry():
    sample = _sample()
    out = hsv_jitter(sample, (0.015, 0.7, 0.4), np.random.default_rng(1))
    assert out.image.shape == sample.image.shape and not np.array_equal(out.image, sample.image)
    np.testing.assert_array_equal(out.boxes, sample.boxes)
    unchanged = hsv_jitter(sample, (0.0, 0.0, 0.0), np.random.default_rng(1))
    # HSV round trip of 8-bit colours is lossy by at most a few levels
    assert np.abs(unchanged.image.astype(int) - sample.image).max() <= 3


def test_letterbox_sample_maps_ignore_boxes():
    sample = _sample(64, 128)
    sample.ignore_boxes = sample.boxes[:1].copy()
    out, info = letterbox_sample(sample, 256)
    np.testing.assert_allclose(out.ignore_boxes, out.boxes[:1])
    assert info.pad_top == 64 and info.scale == (2.0, 2.0)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of 32"):
        AugmentConfig(image_size=100)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.5, 0.5))


def test_mosaic_scales_boxes_by_the_float_ratio_as_mmyolo():
    # 1000 x 667 at 320: the image becomes 320 x 213 (sides truncated) but mmyolo's Mosaic scales
    # boxes by the ratio 0.32 itself, so a 100 x 67 box becomes 32 x 21.44 (not 67 * 213 / 667)
    box = (500, 333, 600, 400)
    samples = [_sample(667, 1000, boxes=(box,), labels=(0,), image_id=i + 1) for i in range(4)]
    checked = 0
    for seed in range(4):
        out = mosaic4(samples, 320, np.random.default_rng(seed))
        inside = (out.boxes[:, :2] > 0).all(1) & (out.boxes[:, 2:] < 640).all(1)
        sizes = out.boxes[inside, 2:] - out.boxes[inside, :2]
        np.testing.assert_allclose(sizes, np.tile([[32.0, 21.44]], (len(sizes), 1)), atol=1e-4)
        checked += len(sizes)
    assert checked >= 8


@pytest.mark.parametrize("inverted", [(60, 70, 20, 16), (60, 16, 20, 70)])
def test_random_affine_drops_inverted_boxes(inverted):
    sample = _sample(boxes=(inverted, (80, 30, 110, 60)))
    sample.ignore_boxes = np.array([inverted], np.float32)
    out = random_affine(sample, 128, np.random.default_rng(0), scale_range=(1.0, 1.0), max_translate=0.0,
                        min_box_size=0, min_area_ratio=0, max_aspect_ratio=np.inf)
    assert out.labels.tolist() == [1] and len(out.ignore_boxes) == 0
