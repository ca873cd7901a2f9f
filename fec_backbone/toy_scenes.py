"""Generated toy scenes for the demos and tests of all three pipelines: coloured shapes on a noisy, shaded
background, drawn from a seeded generator (the same generator state always gives the same pixels).

Two kinds of scene:

* :func:`odd_one_out` (classification and segmentation): four shapes, one in each quarter of a square
  image; three share one colour and the fourth has another, drawn afresh per scene from one palette for
  every class. Neither colour nor shape tells the classes apart: which shape is the odd one depends on
  the colours of shapes far apart in the image, which is what FEC's clustering token mixers relate
  (``tests/test_learning.py`` measures FEC against FEC with them switched off). Classification labels the
  image by the quarter of the odd shape; segmentation labels every pixel ground, common or odd.
* :func:`shapes_scene` (detection): one to a few shapes of random kinds, sizes and colours, apart from
  each other, on an image of any size; the instances are the shapes, their class the kind.

Each pipeline's ``toy_data`` module writes these scenes in its data format (ImageFolder, the ADE20K
layout, COCO instances).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["KINDS", "ODD_ONE_OUT_LABELS", "Scene", "hsv_to_rgb", "odd_one_out", "shape_polygon", "shapes_scene"]

#: Shape kinds :func:`shape_polygon` draws.
KINDS = ("circle", "square", "triangle", "cross")
#: Pixel labels of :func:`odd_one_out` scenes: 0 the one-pixel band around each shape (ignored), then these.
ODD_ONE_OUT_LABELS = ("ground", "common", "odd")

Point = Tuple[float, float]
Colour = Tuple[float, float, float]  # hue in degrees, saturation and value in [0, 1]


@dataclass
class Scene:
    """One generated image ``[H, W, 3]`` uint8 and its shapes: per shape its kind, polygon (image
    coordinates, x to the right, y down) and, for :func:`odd_one_out`, the quarter it sits in. ``labels``
    ``[H, W]`` uint8 holds the pixel labels of an odd-one-out scene (0 band, 1 ground, 2 common, 3 odd)."""

    image: np.ndarray
    kinds: List[str] = field(default_factory=list)
    polygons: List[List[Point]] = field(default_factory=list)
    odd: int = -1
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))


def hsv_to_rgb(hue: float, sat: float, val: float) -> Tuple[int, int, int]:
    """RGB (0-255) of a hue in degrees and a saturation and value in [0, 1]."""
    h = (hue % 360.0) / 60.0
    c = val * sat
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return tuple(int(round(255 * (u + val - c))) for u in rgb)


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float = 0.0) -> List[Point]:
    """The outline of a shape of ``kind`` (:data:`KINDS`) of radius ``r`` centred at ``(cx, cy)``, turned by
    ``angle`` radians; a circle is a 40-gon."""
    if kind == "circle":
        local = [(r * math.cos(2 * math.pi * k / 40), r * math.sin(2 * math.pi * k / 40)) for k in range(40)]
    elif kind == "square":
        s = 0.85 * r
        local = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif kind == "triangle":
        local = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "cross":
        a, b = r, 0.33 * r
        local = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
                 (-b, -b)]
    else:
        raise ValueError(f"no shape {kind!r}; choose one of {KINDS}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in local]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dull colour shading vertically into another, with pixel noise: ``[H, W, 3]`` float32."""
    hue = rng.uniform(0, 360)
    top = np.array(hsv_to_rgb(hue, rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.6)), np.float32)
    bottom = np.array(hsv_to_rgb(hue + rng.uniform(-40, 40), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.6)),
                      np.float32)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    return top * (1 - ramp) + bottom * ramp + rng.normal(0.0, 12.0, (height, width, 3)).astype(np.float32)


def _saturated(rng: np.random.Generator, hue: float) -> Colour:
    """A saturated colour of ``hue``: (hue in degrees, saturation, value)."""
    return hue, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)


def _jittered(rng: np.random.Generator, colour: Colour) -> Tuple[int, int, int]:
    """``colour`` as RGB, moved slightly (up to 6 degrees of hue, 0.05 of saturation and value)."""
    hue, sat, val = colour
    return hsv_to_rgb(hue + rng.uniform(-6, 6), float(np.clip(sat + rng.uniform(-0.05, 0.05), 0, 1)),
                      float(np.clip(val + rng.uniform(-0.05, 0.05), 0, 1)))


def _draw(draw: ImageDraw.ImageDraw, kind: str, polygon: List[Point], cx: float, cy: float, r: float, fill,
          **kwargs) -> None:
    """Fill a shape: a circle as an ellipse, the others as their polygon."""
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, **kwargs)
    else:
        draw.polygon(polygon, fill=fill, **kwargs)


def odd_one_out(rng: np.random.Generator, size: int = 32, kinds: Sequence[str] = KINDS, same_kind: bool = True,
                odd: Optional[int] = None) -> Scene:
    """A square scene of ``size`` pixels: a shape in each quarter, the one in quarter ``odd`` (counted row by
    row: 0 top left .. 3 bottom right; random when None) in one colour and the other three in another, at
    least 90 degrees of hue apart. With ``same_kind`` all four are one kind drawn from ``kinds``, else each
    its own. Shapes keep 3% of the size from their quarter's sides, so a 0.9 centre crop keeps them whole."""
    pixels = _background(rng, size, size)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    paint = ImageDraw.Draw(image)
    common = _saturated(rng, rng.uniform(0, 360))
    odd_colour = _saturated(rng, common[0] + rng.uniform(90, 270))
    shared_kind = kinds[int(rng.integers(len(kinds)))]
    odd = int(rng.integers(4)) if odd is None else odd
    half, scene, shapes = size / 2, Scene(image=np.empty(0), odd=odd), []
    for cell in range(4):
        kind = shared_kind if same_kind else kinds[int(rng.integers(len(kinds)))]
        r = rng.uniform(0.26, 0.34) * half
        lo = r + 0.03 * size
        cx = (cell % 2) * half + rng.uniform(lo, half - lo)
        cy = (cell // 2) * half + rng.uniform(lo, half - lo)
        rgb = _jittered(rng, odd_colour if cell == odd else common)
        angle = 0.0 if kind == "circle" else rng.uniform(0, 2 * math.pi)
        polygon = shape_polygon(kind, cx, cy, r, angle)
        _draw(paint, kind, polygon, cx, cy, r, rgb)
        shapes.append((kind, polygon, cx, cy, r))
        scene.kinds.append(kind)
        scene.polygons.append(polygon)
    scene.image = np.asarray(image)
    labels = Image.new("L", (size, size), 1)
    draw = ImageDraw.Draw(labels)
    for cell, (kind, polygon, cx, cy, r) in enumerate(shapes):
        _draw(draw, kind, polygon, cx, cy, r, 3 if cell == odd else 2, outline=0, width=1)
    scene.labels = np.asarray(labels)
    return scene


def shapes_scene(rng: np.random.Generator, width: int, height: int,
                 kinds: Sequence[str] = ("circle", "square", "triangle"), max_shapes: int = 3,
                 each_kind_once: bool = False) -> Scene:
    """A ``width`` x ``height`` scene of 1 to ``max_shapes`` shapes of random kinds (from ``kinds``; with
    ``each_kind_once``, one shape of each kind instead), sizes and saturated colours, turned a little, each
    clear of the others; fewer when no free place is found."""
    pixels = _background(rng, height, width)
    scene, placed, shapes = Scene(image=np.empty(0)), [], []
    wanted = list(kinds) if each_kind_once else [None] * int(rng.integers(1, max_shapes + 1))
    for given in wanted:
        for _attempt in range(30):
            r = float(rng.uniform(0.12, 0.24) * min(width, height))
            cx, cy = float(rng.uniform(1.3 * r, width - 1.3 * r)), float(rng.uniform(1.3 * r, height - 1.3 * r))
            if all(math.hypot(cx - x, cy - y) > 1.3 * (r + q) for x, y, q in placed):
                break
        else:
            continue
        kind = given or kinds[int(rng.integers(len(kinds)))]
        polygon = [(round(x, 2), round(y, 2)) for x, y in shape_polygon(kind, cx, cy, r, rng.uniform(-0.35, 0.35))]
        placed.append((cx, cy, r))
        shapes.append((polygon, _jittered(rng, _saturated(rng, rng.uniform(0, 360)))))
        scene.kinds.append(kind)
        scene.polygons.append(polygon)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    paint = ImageDraw.Draw(image)
    for polygon, rgb in shapes:
        paint.polygon(polygon, fill=rgb)
    scene.image = np.asarray(image)
    return scene
