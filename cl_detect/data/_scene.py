"""Render one synthetic image: a domain background, textured shapes, occlusion.

Objects are placed in sampling order, each drawn over the ones before it. The
occlusion rule (one place, documented in `render_scene`): an object keeps its
annotation, with the box of the whole object, only if at least
`min_visible` of its own pixels stay visible under the kept objects above it;
otherwise it is neither drawn nor annotated, so no visible object is ever
unannotated and no annotated object is mostly hidden.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from cl_detect.data._shapes import MAX_ROTATION_DEG, outline_extent, place_outline, rasterize

# Saturated object colours (RGB). Backgrounds use only muted colours (saturation
# <= 0.25, value 0.35-0.8), so no background pixel can be mistaken for an object colour.
PALETTE = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (35, 75, 225),
    "yellow": (240, 215, 35), "purple": (135, 45, 185), "orange": (250, 135, 20),
    "pink": (245, 110, 190), "cyan": (20, 200, 215), "white": (245, 245, 245), "black": (15, 15, 15),
}
TEXTURES = ("solid", "striped", "dotted", "checkered")
# Darker shade of the object colour used by the non-solid textures: the object
# stays clearly "red" while its surface varies.
_SECONDARY_SHADE = 0.55


@dataclass(frozen=True)
class SceneObject:
    """A kept object: class index, tight xyxy box of the whole object, visible fraction."""

    label: int
    box: tuple[int, int, int, int]
    visible_fraction: float


def _muted_colour(rng: np.random.Generator, value: tuple[float, float] = (0.35, 0.8)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(*value))
    return np.array(rgb, np.float32) * 255.0


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords)


def _gradient(rng: np.random.Generator, size: int, value=(0.35, 0.8)) -> np.ndarray:
    xx, yy = _grid(size)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / size
    t = ((t - t.min()) / (t.max() - t.min()))[..., None]
    return (1.0 - t) * _muted_colour(rng, value) + t * _muted_colour(rng, value)


def _background(domain: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 (size, size, 3) background of a visual domain."""
    if domain == "plain":
        return np.broadcast_to(_muted_colour(rng), (size, size, 3)).copy()
    if domain == "gradient":
        return _gradient(rng, size)
    if domain == "noise":
        # Mostly luminance noise, so the hue stays muted and never looks like an object colour.
        luminance = rng.normal(0.0, 14.0, (size, size, 1)).astype(np.float32)
        return _muted_colour(rng) + luminance + rng.normal(0.0, 3.0, (size, size, 3)).astype(np.float32)
    if domain == "stripes":
        xx, yy = _grid(size)
        angle, period = rng.uniform(0.0, np.pi), rng.uniform(0.08, 0.2) * size
        band = ((xx * np.cos(angle) + yy * np.sin(angle)) // period % 2)[..., None]
        return band * _muted_colour(rng) + (1.0 - band) * _muted_colour(rng)
    if domain == "clutter":
        image = _gradient(rng, size)
        for _ in range(int(rng.integers(8, 16))):
            p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
            cv2.line(image, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])),
                     _muted_colour(rng, (0.2, 0.9)).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
        return image
    if domain == "night":
        return _gradient(rng, size, value=(0.1, 0.3))
    if domain == "fog":
        return _gradient(rng, size, value=(0.7, 0.9))
    raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")


def _finish(domain: str, image: np.ndarray) -> np.ndarray:
    """Domain-wide colour shift applied after the objects are drawn (objects change too)."""
    if domain == "night":
        return image * 0.5 + np.array([0.0, 5.0, 25.0], np.float32)
    if domain == "fog":
        return image * 0.55 + 0.45 * 205.0
    return image


DOMAINS = ("plain", "gradient", "noise", "stripes", "clutter", "night", "fog")


def _texture(kind: str, colour: np.ndarray, center: tuple[float, float], radius: float,
             angle: float, window: tuple[int, int, int, int]) -> np.ndarray:
    """Float32 surface pattern of one object over `window` (x0, y0, x1, y1), shape (h, w, 3)."""
    x0, y0, x1, y1 = window
    if kind == "solid":
        return np.broadcast_to(colour, (y1 - y0, x1 - x0, 3))
    xx, yy = np.meshgrid(np.arange(x0, x1, dtype=np.float32) + 0.5, np.arange(y0, y1, dtype=np.float32) + 0.5)
    u = (xx - center[0]) * np.cos(angle) + (yy - center[1]) * np.sin(angle)
    v = -(xx - center[0]) * np.sin(angle) + (yy - center[1]) * np.cos(angle)
    period = max(4.0, 0.6 * radius)
    if kind == "striped":
        secondary = (u % period) < 0.35 * period
    elif kind == "dotted":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        secondary = du * du + dv * dv < (0.22 * period) ** 2
    elif kind == "checkered":
        secondary = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        raise ValueError(f"unknown texture {kind!r}; known: {', '.join(TEXTURES)}")
    return np.where(secondary[..., None], colour * _SECONDARY_SHADE, colour)


def render_scene(rng: np.random.Generator, classes: list[tuple[str, str]], domains: tuple[str, ...],
                 size: int, scale_range: tuple[float, float], max_objects: int,
                 min_visible: float) -> tuple[np.ndarray, list[SceneObject], str]:
    """Render one image and its annotations.

    Args:
        rng: the image's own generator (everything random is drawn from it).
        classes: (colour, shape) per class; objects are drawn uniformly over them.
        domains: visual domains to pick the background from (one per image).
        size: image side in pixels.
        scale_range: min and max object size as a fraction of the image side.
        max_objects: objects sampled per image are uniform in 1..max_objects
            (fewer may be kept, see the occlusion rule; the topmost always is).
        min_visible: fraction of an object's own pixels that must stay visible to keep it.

    Returns:
        (size, size, 3) uint8 RGB image, the kept objects bottom to top, and the domain drawn.
    """
    domain = domains[int(rng.integers(len(domains)))]
    image = _background(domain, rng, size)
    candidates = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(classes)))
        colour, shape = classes[label]
        radius = 0.5 * size * np.exp(rng.uniform(*np.log(scale_range)))
        stretch = np.exp(rng.uniform(-0.12, 0.12))
        angle = rng.uniform(-1.0, 1.0) * MAX_ROTATION_DEG[shape]
        polygons = place_outline(shape, (radius * stretch, radius / stretch), angle)
        low, high = outline_extent(polygons)
        center = (rng.uniform(-low[0], size - high[0]), rng.uniform(-low[1], size - high[1]))
        coverage = rasterize(polygons, center, size)
        surface = (TEXTURES[int(rng.integers(len(TEXTURES)))], np.array(PALETTE[colour], np.float32),
                   center, radius, rng.uniform(0.0, np.pi))
        candidates.append((label, coverage, surface))

    # Walk from the top object down: a candidate is kept when enough of it shows
    # under the objects already kept above it. Dropping one only uncovers the
    # ones below, which are decided later, so the rule is applied consistently.
    covered = np.zeros((size, size), bool)
    kept: list[tuple[int, np.ndarray, np.ndarray, SceneObject]] = []
    for label, coverage, surface in reversed(candidates):
        inside = coverage >= 128
        area = int(inside.sum())
        if area == 0:
            continue
        visible = float((inside & ~covered).sum()) / area
        if visible < min_visible:
            continue
        covered |= inside
        ys, xs = np.nonzero(inside)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        kept.append((label, coverage, surface, SceneObject(label, box, round(visible, 4))))

    objects = []
    for label, coverage, surface, scene_object in reversed(kept):
        # Composite only inside the anti-aliased footprint; textures are made for that window alone.
        ys, xs = np.nonzero(coverage)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        alpha = (coverage[y0:y1, x0:x1].astype(np.float32) / 255.0)[..., None]
        pattern = _texture(*surface, window=(x0, y0, x1, y1))
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - alpha) + pattern * alpha
        objects.append(scene_object)
    image = _finish(domain, image)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects, domain
