"""The synthetic world of the `synthetic` protocol, written to disk as COCO json + PNG.

Objects are shapes x colours with a random surface texture, on backgrounds of
several visual domains, with occlusion and a range of scales. A class is a
colour-shape pair named by a plain phrase ("red circle") that a pretrained
sentence embedding understands; the texture varies inside a class and is not
part of its name, which keeps the vocabulary small.

Splits, each under `<out>/<split>/` with `images/` and COCO json whose
`file_name`s are relative to the split folder:
- `base` (train + test): every base colour x base shape pair except the
  held-out pairs, on the base domains. The base model is pretrained on it.
- `heldout` (test): only the held-out colour-shape pairs, base domains. Their
  colours and shapes appear in base training in other pairs, never together,
  so AP here is zero-shot compositional transfer through the text encoder.
- `task1..taskT` (train + test): every colour x the task's new shapes, on the
  task's own new domain; images hold only the task's classes.
- `retention` (test): drawn like base test from a separate random stream, to
  measure what base knowledge a continual run keeps.
`<out>/world.json` records vocabularies, domains, seed, sizes and counts.

Every image has its own generator seeded by (seed, split, subset, index), so
the same seed gives byte-identical files and changing one count leaves the
other images unchanged.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cl_detect.data._scene import DOMAINS, PALETTE, TEXTURES, render_scene
from cl_detect.data._shapes import SHAPES

OCCLUSION_RULE = (
    "objects are drawn in sampling order; walking from the top object down, an object is kept "
    "(drawn, and annotated with the box of its whole outline) only if at least min_visible_fraction "
    "of its own pixels are not covered by kept objects above it; otherwise it is neither drawn nor annotated")


@dataclass(frozen=True)
class WorldSpec:
    """Vocabulary, domains and object statistics of the synthetic world.

    Args:
        colours: object colours (names from `_scene.PALETTE`).
        base_shapes: shapes of the base vocabulary.
        heldout_pairs: (colour, shape) pairs kept out of base training; each
            colour and each shape must also occur in some base pair.
        task_shapes: new shapes of each later task, in task order.
        base_domains: backgrounds of base, held-out and retention images.
        task_domains: the new visual domain of each later task, in task order.
        scale_range: object size as a fraction of the image side (min, max).
        max_objects: objects sampled per image are uniform in 1..max_objects.
        min_visible_fraction: see `OCCLUSION_RULE`.
    """

    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    base_shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
    heldout_pairs: tuple[tuple[str, str], ...] = (
        ("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "star"), ("purple", "cross"))
    task_shapes: tuple[tuple[str, ...], ...] = (
        ("ring", "arrow"), ("heart", "diamond"), ("hexagon", "crescent"), ("pentagon", "trapezoid"))
    base_domains: tuple[str, ...] = ("plain", "gradient", "noise")
    task_domains: tuple[str, ...] = ("clutter", "night", "stripes", "fog")
    scale_range: tuple[float, float] = (0.15, 0.45)
    max_objects: int = 6
    min_visible_fraction: float = 0.6

    def __post_init__(self):
        unknown = ([c for c in self.colours if c not in PALETTE]
                   + [s for s in self.base_shapes + sum(self.task_shapes, ()) if s not in SHAPES]
                   + [d for d in self.base_domains + self.task_domains if d not in DOMAINS])
        if unknown:
            raise ValueError(f"unknown colours/shapes/domains {unknown}; known: {sorted(PALETTE)}, "
                             f"{list(SHAPES)}, {list(DOMAINS)}")
        if set(self.base_shapes) & set(sum(self.task_shapes, ())):
            raise ValueError("task shapes must be new: they may not repeat a base shape")
        base = set(self.base_pairs)
        for colour, shape in self.heldout_pairs:
            if colour not in self.colours or shape not in self.base_shapes:
                raise ValueError(f"held-out pair {colour} {shape} is not a base colour x base shape")
            if not any(c == colour for c, _ in base) or not any(s == shape for _, s in base):
                raise ValueError(f"held-out pair {colour} {shape}: its colour and shape must each "
                                 f"appear in another base pair, or zero-shot transfer is impossible")
        low, high = self.scale_range
        if not 0.0 < low <= high <= 0.9:
            raise ValueError(f"scale_range must satisfy 0 < min <= max <= 0.9, got {self.scale_range}")
        if self.max_objects < 1 or not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError("max_objects must be >= 1 and min_visible_fraction in (0, 1]")

    @property
    def base_pairs(self) -> list[tuple[str, str]]:
        """Base training classes: colour-major order, held-out pairs removed."""
        heldout = set(self.heldout_pairs)
        return [(c, s) for c in self.colours for s in self.base_shapes if (c, s) not in heldout]


@dataclass
class _Split:
    """One split's plan (classes, domains, image counts, random stream) and, once written, its counts."""

    name: str
    kind: str
    classes: list[tuple[str, str]]
    domains: tuple[str, ...]
    counts: dict[str, int]
    stream: int
    new_shapes: tuple[str, ...] = ()
    summary: dict = field(default_factory=dict)


def class_name(colour: str, shape: str) -> str:
    """The phrase a class is called by (and encoded as text)."""
    return f"{colour} {shape}"


def _plan_splits(spec: WorldSpec, num_base_train: int, num_test: int, num_task_train: int,
                 num_tasks: int) -> list[_Split]:
    if num_tasks > min(len(spec.task_shapes), len(spec.task_domains)):
        raise ValueError(f"num_tasks={num_tasks} but the spec defines new shapes and domains for only "
                         f"{min(len(spec.task_shapes), len(spec.task_domains))} tasks")
    if min(num_base_train, num_test, num_task_train) < 1 or num_tasks < 0:
        raise ValueError("image counts must be >= 1 and num_tasks >= 0")
    splits = [
        _Split("base", "base", spec.base_pairs, spec.base_domains, {"train": num_base_train, "test": num_test}, 0),
        _Split("heldout", "heldout", list(spec.heldout_pairs), spec.base_domains, {"test": num_test}, 1),
    ]
    for k in range(num_tasks):
        shapes = spec.task_shapes[k]
        splits.append(_Split(f"task{k + 1}", "task", [(c, s) for c in spec.colours for s in shapes],
                             (spec.task_domains[k],), {"train": num_task_train, "test": num_test},
                             10 + k, new_shapes=shapes))
    splits.append(_Split("retention", "retention", spec.base_pairs, spec.base_domains, {"test": num_test}, 2))
    return splits


def _write_subset(out_dir: Path, split: _Split, subset: str, seed: int, image_size: int,
                  spec: WorldSpec) -> dict:
    """Render one subset's images and write its COCO json; return its counts."""
    split_dir = out_dir / split.name
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    subset_index = ("train", "test").index(subset)
    images, annotations, written = [], [], set()
    for index in range(split.counts[subset]):
        rng = np.random.default_rng([seed, split.stream, subset_index, index])
        pixels, objects, domain = render_scene(rng, split.classes, split.domains, image_size,
                                               spec.scale_range, spec.max_objects, spec.min_visible_fraction)
        file_name = f"images/{subset}_{index:06d}.png"
        cv2.imwrite(str(split_dir / file_name), np.ascontiguousarray(pixels[..., ::-1]))
        written.add(file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size,
                       "height": image_size, "domain": domain})
        for scene_object in objects:
            x0, y0, x1, y1 = scene_object.box
            width, height = x1 - x0, y1 - y0
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": scene_object.label + 1,
                "bbox": [float(x0), float(y0), float(width), float(height)],
                "area": float(width * height), "iscrowd": 0,
                "visible_fraction": scene_object.visible_fraction})
    coco = {
        "info": {"description": f"cl_detect synthetic world, split {split.name}/{subset}", "seed": seed},
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": class_name(c, s)} for i, (c, s) in enumerate(split.classes)],
    }
    (split_dir / f"{subset}.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    return {"images": len(images), "boxes": len(annotations), "written": written}


def write_synthetic_world(out_dir: str | Path, seed: int = 0, image_size: int = 96,
                          num_base_train: int = 600, num_test: int = 100, num_task_train: int = 200,
                          num_tasks: int = 2, spec: WorldSpec | None = None) -> dict:
    """Generate the synthetic world and write it under `out_dir`.

    Default sizes fit the CPU demo (the whole protocol for every method in
    minutes on 2 cores): 96-px images, 600 base training images, 200 per later
    task and 100 per test set (about 1,500 images, a few seconds to write).

    Args:
        out_dir: output folder (created; PNGs of an earlier run that this run
            does not write are removed from the split image folders).
        seed: everything random derives from it.
        image_size: side of the square images in pixels.
        num_base_train: images in `base/train.json`.
        num_test: images in every test set (base, heldout, each task, retention).
        num_task_train: training images per later task.
        num_tasks: number of later tasks (`task1`..), at most 4 with the default spec.
        spec: vocabulary, domains and object statistics (default `WorldSpec()`).

    Returns:
        The summary also written to `<out_dir>/world.json`.
    """
    spec = spec or WorldSpec()
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px, got {image_size}")
    out_dir = Path(out_dir)
    splits = _plan_splits(spec, num_base_train, num_test, num_task_train, num_tasks)
    for split in splits:
        written = set()
        for subset in split.counts:
            counts = _write_subset(out_dir, split, subset, seed, image_size, spec)
            written |= counts.pop("written")
            split.summary[subset] = counts
        for stale in (out_dir / split.name / "images").glob("*.png"):
            if f"images/{stale.name}" not in written:
                stale.unlink()
    world = {
        "name": "synthetic", "seed": seed, "image_size": image_size, "image_format": "png",
        "colours": list(spec.colours), "base_shapes": list(spec.base_shapes), "textures": list(TEXTURES),
        "texture_in_class_name": False, "scale_range": list(spec.scale_range),
        "max_objects": spec.max_objects, "min_visible_fraction": spec.min_visible_fraction,
        "occlusion_rule": OCCLUSION_RULE,
        "heldout_pairs": [class_name(c, s) for c, s in spec.heldout_pairs],
        "task_order": [s.name for s in splits if s.kind == "task"],
        "splits": {s.name: {
            "kind": s.kind, "classes": [class_name(c, shape) for c, shape in s.classes],
            "domains": list(s.domains), "new_shapes": list(s.new_shapes), "image_root": s.name,
            "files": {subset: f"{s.name}/{subset}.json" for subset in s.counts},
            "counts": s.summary} for s in splits},
    }
    (out_dir / "world.json").write_text(json.dumps(world, indent=2) + "\n")
    return world


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `cl-detect data synth` to `parser`."""
    parser.add_argument("--out", required=True, help="output folder for the world (world.json + one folder per split)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--num-base-train", type=int, default=600, help="base training images")
    parser.add_argument("--num-test", type=int, default=100, help="images per test set")
    parser.add_argument("--num-task-train", type=int, default=200, help="training images per later task")
    parser.add_argument("--num-tasks", type=int, default=2, help="number of later tasks")


def run_synth(args: argparse.Namespace) -> int:
    """Write the world described by parsed `add_synth_arguments` options and print its counts."""
    world = write_synthetic_world(args.out, seed=args.seed, image_size=args.image_size,
                                  num_base_train=args.num_base_train, num_test=args.num_test,
                                  num_task_train=args.num_task_train, num_tasks=args.num_tasks)
    print(f"{'split':<10} {'subset':<6} {'images':>7} {'boxes':>7} {'classes':>8}")
    for name, split in world["splits"].items():
        for subset, counts in split["counts"].items():
            print(f"{name:<10} {subset:<6} {counts['images']:>7} {counts['boxes']:>7} {len(split['classes']):>8}")
    print(f"wrote {Path(args.out) / 'world.json'}")
    return 0
