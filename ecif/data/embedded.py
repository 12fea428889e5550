"""The embedded data sets, built without any download.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), captions such
  as "a handwritten digit seven" from a few templates.
- ``shapes``: a generated compositional set of coloured shapes with a size and a position
  ("a small red circle at the top left"), deterministic from a seed, any size.
"""

from __future__ import annotations

import numpy as np

from ecif.data.pairs import TEMPLATE, CaptionSpec, Dataset, build, partition, split_sizes

EMBEDDED = ("digits", "shapes")

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_SPEC = CaptionSpec(
    templates=(
        "a handwritten digit {digit}",
        "a photo of the number {digit}",
        "a scan of a handwritten {digit}",
        "the digit {digit}, written by hand",
    ),
    values={"digit": DIGIT_NAMES},
    label_attribute="digit",
    prompt_template="a handwritten digit {digit}",
)
DIGITS_DEFAULT_SIZES = {"pretrain": 0.5, "train": 0.2, "val": 0.15, "test": 0.15}


def digits(seed: int = 0, sizes: dict | None = None) -> Dataset:
    """scikit-learn's 8x8 digits as image-caption pairs.

    Images are uint8 (n, 8, 8), the 0..16 intensities scaled to 0..255. Each pair gets one of
    four caption templates (seeded). Default split fractions: pretrain 0.5, train 0.2, val 0.15,
    test 0.15 of the 1,797 images (898 / 359 / 270 / 270).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    n = len(images)
    rng = np.random.default_rng([seed, 1])
    attributes = {
        "digit": d.target.astype(np.int64),
        TEMPLATE: rng.integers(0, len(DIGIT_SPEC.templates), size=n).astype(np.int64),
    }
    parts = partition(n, split_sizes(n, sizes, DIGITS_DEFAULT_SIZES), seed)
    return build("digits", images, attributes, DIGIT_SPEC, parts, seed, {"source": "sklearn.datasets.load_digits"})


# --------------------------------------------------------------------------------------------
# generated compositional shapes

SHAPE_VALUES = {
    "size": ["small", "large"],
    "color": ["red", "green", "blue", "yellow", "purple"],
    "shape": ["circle", "square", "triangle"],
    "position": ["top left", "top right", "bottom left", "bottom right", "center"],
}
SHAPE_RGB = np.array([[220, 40, 40], [40, 190, 60], [50, 80, 230], [230, 210, 40], [160, 60, 200]], dtype=np.float32)
SHAPES_SPEC = CaptionSpec(
    templates=("a {size} {color} {shape} at the {position}",),
    values=SHAPE_VALUES,
    label_attribute="shape",
    prompt_template="a photo of a {shape}",
    compositional=True,
)
SHAPES_DEFAULT_SIZES = {"pretrain": 1200, "train": 400, "val": 200, "test": 200}


def render_shapes(attributes: dict[str, np.ndarray], seed: int, image_size: int = 32) -> np.ndarray:
    """Draw one shape per image from attribute codes, vectorised over images.

    Args:
        attributes: codes ``size``, ``color``, ``shape``, ``position`` as int arrays (n,).
        seed: seed of the position jitter and the background noise.
        image_size: side of the square images.

    Returns:
        uint8 array (n, image_size, image_size, 3): a dark noisy background and a filled shape
        centred in its quadrant (or the centre) with +-1/16 of the side of jitter.
    """
    n = len(attributes["shape"])
    s = float(image_size)
    rng = np.random.default_rng([seed, 2])
    qx = np.array([0.25, 0.75, 0.25, 0.75, 0.5])[attributes["position"]]
    qy = np.array([0.25, 0.25, 0.75, 0.75, 0.5])[attributes["position"]]
    cx = (qx + rng.uniform(-1, 1, n) / 16) * s
    cy = (qy + rng.uniform(-1, 1, n) / 16) * s
    radius = np.where(attributes["size"] == 0, 0.11, 0.21) * s * rng.uniform(0.9, 1.1, n)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    r = radius[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    # upward triangle: apex at cy - r, base at cy + r, half-width growing linearly to r
    triangle = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    mask = np.select([attributes["shape"][:, None, None] == k for k in range(3)], [circle, square, triangle])
    background = rng.normal(30.0, 8.0, size=(n, image_size, image_size, 3))
    colour = SHAPE_RGB[attributes["color"]][:, None, None, :]
    img = np.where(mask[..., None], colour, background)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def shapes(seed: int = 0, sizes: dict | None = None, image_size: int = 32) -> Dataset:
    """Generated coloured shapes with size and position; captions like "a small red circle at
    the top left". Attributes are drawn uniformly and independently (seeded), so every split
    carries exact attribute-level ground truth. Labels are the ``shape`` attribute (3 classes).
    Default sizes: pretrain 1200, train 400, val 200, test 200 (any counts allowed)."""
    counts = split_sizes(10**9, sizes or SHAPES_DEFAULT_SIZES, SHAPES_DEFAULT_SIZES)
    n = sum(counts.values())
    rng = np.random.default_rng([seed, 3])
    attributes = {a: rng.integers(0, len(v), size=n).astype(np.int64) for a, v in SHAPE_VALUES.items()}
    attributes[TEMPLATE] = np.zeros(n, dtype=np.int64)
    images = render_shapes(attributes, seed, image_size)
    parts = partition(n, counts, seed)
    return build("shapes", images, attributes, SHAPES_SPEC, parts, seed, {"image_size": image_size})
