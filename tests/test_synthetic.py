"""The synthetic world: determinism, vocabulary splits, box correctness, COCO validity, CLI hooks."""
import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cl_detect.data._scene import PALETTE
from cl_detect.data.synthetic import WorldSpec, add_synth_arguments, run_synth, write_synthetic_world

SMALL = dict(image_size=96, num_base_train=40, num_test=12, num_task_train=12, num_tasks=2)
# Max per-channel distance for a pixel to count as an object's (PNG is lossless, so only
# anti-aliased edges and shade textures are off the exact colour).
COLOUR_TOLERANCE = 10


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_synthetic_world(out, seed=0, **SMALL)
    return out


def _load(out: Path, split: str, subset: str) -> dict:
    return json.loads((out / split / f"{subset}.json").read_text())


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _rgb(out: Path, split: str, file_name: str) -> np.ndarray:
    return cv2.imread(str(out / split / file_name), cv2.IMREAD_COLOR)[..., ::-1].astype(np.int32)


def _colour_mask(image: np.ndarray, colour: str, with_shade: bool = True) -> np.ndarray:
    """Pixels of `colour` or (with_shade) of its darker texture shade."""
    main = np.array(PALETTE[colour])
    mask = np.abs(image - main).max(-1) <= COLOUR_TOLERANCE
    if with_shade:
        mask |= np.abs(image - np.round(main * 0.55)).max(-1) <= COLOUR_TOLERANCE
    return mask


def test_same_seed_gives_identical_files_and_other_seed_differs(world_dir, tmp_path):
    write_synthetic_world(tmp_path / "again", seed=0, **SMALL)
    first, again = _files(world_dir), _files(tmp_path / "again")
    assert first.keys() == again.keys()
    assert [name for name in first if first[name] != again[name]] == []

    write_synthetic_world(tmp_path / "other", seed=1, **SMALL)
    other = _files(tmp_path / "other")
    assert other["base/train.json"] != first["base/train.json"]
    name = "base/images/train_000000.png"
    assert not np.array_equal(_rgb(world_dir, "base", name[5:]), _rgb(tmp_path / "other", "base", name[5:]))


def test_counts_layout_and_world_summary(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    assert list(world["splits"]) == ["base", "heldout", "task1", "task2", "retention"]
    assert world["task_order"] == ["task1", "task2"]
    expected = {"base": {"train": 40, "test": 12}, "heldout": {"test": 12}, "task1": {"train": 12, "test": 12},
                "task2": {"train": 12, "test": 12}, "retention": {"test": 12}}
    for split, subsets in expected.items():
        info = world["splits"][split]
        assert set(info["files"]) == set(subsets)
        assert not (world_dir / split / "train.json").exists() or "train" in subsets
        for subset, num_images in subsets.items():
            coco = _load(world_dir, split, subset)
            assert len(coco["images"]) == num_images == info["counts"][subset]["images"]
            assert len(coco["annotations"]) == info["counts"][subset]["boxes"]
            assert [c["name"] for c in coco["categories"]] == info["classes"]
    assert len(list((world_dir / "base" / "images").glob("*.png"))) == 52
    assert world["seed"] == 0 and world["image_size"] == 96


def test_heldout_pairs_are_zero_shot(world_dir):
    spec = WorldSpec()
    base = _load(world_dir, "base", "train")
    names = {c["id"]: c["name"] for c in base["categories"]}
    used = {names[a["category_id"]] for a in base["annotations"]}
    heldout = [f"{c} {s}" for c, s in spec.heldout_pairs]
    assert not set(heldout) & set(names.values())
    for colour, shape in spec.heldout_pairs:
        assert any(n.startswith(colour + " ") for n in used), colour
        assert any(n.endswith(" " + shape) for n in used), shape
    heldout_test = _load(world_dir, "heldout", "test")
    assert [c["name"] for c in heldout_test["categories"]] == heldout
    assert len(heldout_test["annotations"]) >= len(heldout_test["images"])


def test_task_classes_and_domains_are_new(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    base_names = set(world["splits"]["base"]["classes"])
    base_shapes = set(world["base_shapes"])
    for task in world["task_order"]:
        info = world["splits"][task]
        assert not set(info["classes"]) & base_names
        assert info["new_shapes"] and not set(info["new_shapes"]) & base_shapes
        domains = {image["domain"] for image in _load(world_dir, task, "train")["images"]}
        assert domains == set(info["domains"]) and not domains & set(world["splits"]["base"]["domains"])
    assert world["splits"]["task1"]["classes"] != world["splits"]["task2"]["classes"]


def test_pycocotools_reads_every_file(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    for split, info in world["splits"].items():
        for subset, rel in info["files"].items():
            coco = COCO(str(world_dir / rel))
            assert coco.getCatIds() == list(range(1, len(info["classes"]) + 1))
            assert len(coco.getAnnIds()) == info["counts"][subset]["boxes"]
            for image in coco.loadImgs(coco.getImgIds()):
                height, width = cv2.imread(str(world_dir / info["image_root"] / image["file_name"])).shape[:2]
                assert (width, height) == (image["width"], image["height"])
            for ann in coco.loadAnns(coco.getAnnIds()):
                assert ann["iscrowd"] == 0 and ann["area"] == ann["bbox"][2] * ann["bbox"][3]


@pytest.mark.parametrize("split,subset", [("base", "train"), ("base", "test"), ("heldout", "test"),
                                          ("retention", "test")])
def test_boxes_match_drawn_objects(world_dir, split, subset):
    coco = _load(world_dir, split, subset)
    colours = {c["id"]: c["name"].split()[0] for c in coco["categories"]}
    by_image = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    tight_checked = occluded = 0
    for image in coco["images"]:
        pixels = _rgb(world_dir, split, image["file_name"])
        anns = by_image[image["id"]]
        assert 1 <= len(anns) <= WorldSpec().max_objects
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
            assert ann["visible_fraction"] >= WorldSpec().min_visible_fraction
            occluded += ann["visible_fraction"] < 1.0
            inside = _colour_mask(pixels[int(y):int(y + h), int(x):int(x + w)], colours[ann["category_id"]])
            assert inside.mean() >= 0.15, (image["file_name"], ann)
        # No visible object without a box: every pixel of an object colour lies in a box of that
        # colour. Main colours only: the dark shades are close enough that a seam between two
        # touching textures can blend into a third shade.
        for colour in set(colours.values()):
            allowed = np.zeros(pixels.shape[:2], bool)
            for ann in anns:
                if colours[ann["category_id"]] == colour:
                    x, y, w, h = (int(v) for v in ann["bbox"])
                    allowed[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = True
            assert not (_colour_mask(pixels, colour, with_shade=False) & ~allowed).any(), (image["file_name"], colour)
        if len(anns) == 1:
            # The box is tight: the object's colour reaches (almost) every side of it.
            x, y, w, h = anns[0]["bbox"]
            ys, xs = np.nonzero(_colour_mask(pixels, colours[anns[0]["category_id"]]))
            assert abs(xs.min() - x) <= 3 and abs(ys.min() - y) <= 3
            assert abs(xs.max() + 1 - (x + w)) <= 3 and abs(ys.max() + 1 - (y + h)) <= 3
            tight_checked += 1
    assert tight_checked > 0 or subset == "test"
    assert occluded > 0 or subset == "test"


def test_rewrite_removes_stale_images_and_keeps_other_splits(tmp_path):
    write_synthetic_world(tmp_path, seed=3, **SMALL)
    before = (tmp_path / "base" / "test.json").read_bytes()
    write_synthetic_world(tmp_path, seed=3, **{**SMALL, "num_base_train": 5})
    assert len(list((tmp_path / "base" / "images").glob("train_*.png"))) == 5
    assert (tmp_path / "base" / "test.json").read_bytes() == before


def test_invalid_requests_raise():
    with pytest.raises(ValueError, match="zero-shot"):
        WorldSpec(base_shapes=("circle", "square"), colours=("red", "green"),
                  heldout_pairs=(("red", "circle"), ("green", "circle")))
    with pytest.raises(ValueError, match="new"):
        WorldSpec(task_shapes=(("circle",),))
    with pytest.raises(ValueError, match="num_tasks"):
        write_synthetic_world("/nonexistent/never-written", num_tasks=5)


def test_cli_hooks(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--seed", "2", "--image-size", "64", "--num-base-train", "6",
                              "--num-test", "3", "--num-task-train", "4", "--num-tasks", "1"])
    assert run_synth(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:-1]}
    assert set(rows) == {("base", "train"), ("base", "test"), ("heldout", "test"), ("task1", "train"),
                         ("task1", "test"), ("retention", "test")}
    assert rows[("base", "train")][0] == "6" and rows[("task1", "train")][0] == "4"
    assert rows[("heldout", "test")][2] == "5"
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["seed"] == 2 and world["image_size"] == 64
    assert parser.parse_args(["--out", "x"]).image_size == 96
