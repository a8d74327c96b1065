"""Shape outlines and anti-aliased rasterisation for the synthetic world.

Every shape is a list of polygons in unit coordinates (centre at 0, radius
about 1, y pointing down like image rows); a polygon either adds to the shape
or cuts a hole out of it (ring, crescent). One representation for all shapes
keeps placement (extent of the outline) and drawing (OpenCV's anti-aliased
`fillPoly` with sub-pixel coordinates) the same code for every shape.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Sub-pixel bits passed to cv2.fillPoly: vertices keep 1/16 px precision, which
# is what makes small shapes look round instead of jagged.
_SUBPIXEL_BITS = 4


def _regular(sides: int, radius: float = 1.0, start_deg: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(sides) * 360.0 / sides)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.deg2rad(-90.0 + np.arange(2 * points) * 180.0 / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    # The classic curve spans y in [-12, 17] (pre-flip); centre it before scaling to radius 1.
    points -= (points.max(0) + points.min(0)) / 2.0
    return points / np.abs(points).max()


def _outline(name: str) -> list[tuple[np.ndarray, bool]]:
    """Polygons of `name` in unit coordinates as (vertices (N, 2), adds_to_shape)."""
    if name == "circle":
        return [(_regular(48), True)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85, True)]
    if name == "triangle":
        # The centroid of an equilateral triangle is lower than its bbox centre; shift to centre the bbox.
        return [(_regular(3) + np.array([0.0, 0.25]), True)]
    if name == "star":
        return [(_star(), True)]
    if name == "cross":
        a, b = 0.33, 1.0
        return [(np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a],
                           [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]], float), True)]
    if name == "hexagon":
        return [(_regular(6, start_deg=0.0), True)]
    if name == "pentagon":
        return [(_regular(5) + np.array([0.0, 0.1]), True)]
    if name == "diamond":
        # Taller than wide so a diamond is not just a square turned by 45 degrees.
        return [(np.array([[0, -1], [0.7, 0], [0, 1], [-0.7, 0]], float), True)]
    if name == "heart":
        return [(_heart(), True)]
    if name == "ring":
        return [(_regular(48), True), (_regular(48, radius=0.55), False)]
    if name == "crescent":
        return [(_regular(48), True), (_regular(48, radius=0.85) + np.array([0.45, -0.2]), False)]
    if name == "arrow":
        shaft, head = 0.28, 0.75
        return [(np.array([[-1, -shaft], [0.1, -shaft], [0.1, -head], [1, 0],
                           [0.1, head], [0.1, shaft], [-1, shaft]], float), True)]
    if name == "trapezoid":
        return [(np.array([[-0.55, -0.7], [0.55, -0.7], [1, 0.7], [-1, 0.7]], float), True)]
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


# Largest random rotation (degrees) that keeps each shape recognisable under its
# name: a square turned by 45 degrees would be a diamond, a triangle upside down
# is still a triangle but looks unlike the text prior of "triangle".
MAX_ROTATION_DEG = {
    "circle": 0.0, "square": 12.0, "triangle": 15.0, "star": 36.0, "cross": 12.0,
    "hexagon": 30.0, "pentagon": 36.0, "diamond": 12.0, "heart": 15.0, "ring": 0.0,
    "crescent": 180.0, "arrow": 180.0, "trapezoid": 12.0,
}
SHAPES = tuple(MAX_ROTATION_DEG)


def place_outline(name: str, radius_xy: tuple[float, float], angle_deg: float,
                  ) -> list[tuple[np.ndarray, bool]]:
    """Scale and rotate a shape's outline into pixel offsets from its centre.

    Args:
        name: shape name (one of `SHAPES`).
        radius_xy: half-width and half-height before rotation, in pixels.
        angle_deg: rotation, counter-clockwise on screen.

    Returns:
        (vertices (N, 2) float64 offsets in pixels, adds_to_shape) per polygon.
    """
    theta = math.radians(-angle_deg)  # image y points down, so negate for screen-CCW
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    scale = np.asarray(radius_xy, float)
    return [((vertices * scale) @ rotation.T, adds) for vertices, adds in _outline(name)]


def outline_extent(polygons: list[tuple[np.ndarray, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Min and max (x, y) offsets of the parts that add to the shape."""
    points = np.concatenate([vertices for vertices, adds in polygons if adds])
    return points.min(0), points.max(0)


def rasterize(polygons: list[tuple[np.ndarray, bool]], center: tuple[float, float],
              size: int) -> np.ndarray:
    """Draw a placed outline as an anti-aliased coverage mask.

    Args:
        polygons: output of `place_outline`.
        center: (x, y) of the shape centre in pixels (pixel centres at integer + 0.5).
        size: side of the square image.

    Returns:
        (size, size) uint8 coverage, 0 outside the shape and 255 fully inside.
    """
    mask = np.zeros((size, size), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    # OpenCV puts pixel centres at integer coordinates; our centres sit at +0.5.
    origin = np.asarray(center, float) - 0.5
    for vertices, adds in polygons:
        fixed = np.round((vertices + origin) * scale).astype(np.int32)
        cv2.fillPoly(mask, [fixed], 255 if adds else 0, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    return mask
