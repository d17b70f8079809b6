"""A procedural video task: coloured shapes moving on a dark background, with exact ground truth.

What this module promises
-------------------------
* ``make_clip(seed)`` draws a clip of ``num_frames`` (default 16) RGB frames of ``size`` x ``size``
  (default 64) pixels, ``np.uint8`` ``(T, H, W, 3)``, and its ground truth (:class:`ClipTruth`):
  1-3 shapes of distinct kinds (circle, square, triangle) and distinct colours (red, green, blue,
  yellow, purple, orange, white), each either staying in one of the 9 places of a 3x3 grid or
  moving left/right/up/down by one or two places; a shape may appear mid-clip or change colour
  mid-clip (at most one of the two). Shapes never overlap. The background is a dark uniform colour
  with mild pixel noise, and each shape's colour is jittered a little around its palette value.
* ``describe(truth)`` writes the description, ``questions(truth)`` the question/answer pairs; both
  are pure functions of the truth, and every answer is read off the video (counts, colours,
  directions, places, which shape changes or appears).
* ``make_example(seed)`` picks a description prompt or one question for the clip of ``seed``.
* Everything is deterministic from the seed (``random.Random`` for the structure, a numpy
  ``Generator`` for pixel noise); nothing touches a global RNG. A clip takes well under a
  millisecond: shape masks are drawn once with PIL and stamped with numpy.
* ``corpus()`` is a list of texts that holds every word the task can produce (for training a
  tokenizer); ``task_words()`` is that vocabulary.

Text conventions: British spelling ("colour", "centre"); descriptions are sentences ending with a
period; short answers are lower-case phrases without a period ("blue", "to the right", "two",
"the circle", "there is no triangle").
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COLOURS",
    "DESCRIBE_PROMPTS",
    "KINDS",
    "PLACES",
    "ClipTruth",
    "Example",
    "ShapeTruth",
    "corpus",
    "coverage",
    "describe",
    "make_clip",
    "make_example",
    "place_centre",
    "questions",
    "render",
    "task_words",
]

KINDS: tuple[str, ...] = ("circle", "square", "triangle")
# Named palette (RGB). Neighbouring hues stay far apart after the +-12 jitter.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (230, 220, 50),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
}
# (row, col) of the 3x3 grid -> (noun phrase, preposition for "stays <prep> <place>")
PLACES: dict[tuple[int, int], tuple[str, str]] = {
    (0, 0): ("the top left corner", "in"),
    (0, 1): ("the top", "at"),
    (0, 2): ("the top right corner", "in"),
    (1, 0): ("the left", "on"),
    (1, 1): ("the centre", "in"),
    (1, 2): ("the right", "on"),
    (2, 0): ("the bottom left corner", "in"),
    (2, 1): ("the bottom", "at"),
    (2, 2): ("the bottom right corner", "in"),
}
MOTIONS: tuple[str, ...] = ("stay", "left", "right", "up", "down")
# Motion -> answer to "Which way does the X move?"
_DIRECTION_ANSWER = {
    "stay": "it does not move",
    "left": "to the left",
    "right": "to the right",
    "up": "up",
    "down": "down",
}
_NUMBERS = ("none", "one", "two", "three")
DESCRIBE_PROMPTS: tuple[str, ...] = (
    "Describe the video.",
    "Describe what happens in the video.",
    "What happens in the video?",
)
_JITTER = 12  # max per-channel colour jitter of a shape
_NOISE = 5  # uniform integer pixel noise in [-5, 5] on every frame


@dataclass(frozen=True)
class ShapeTruth:
    """One shape of a clip. Places are (row, col) cells of the 3x3 grid."""

    kind: str
    colour: str  # colour when it first appears
    start: tuple[int, int]
    end: tuple[int, int]  # == start for a shape that stays
    appear: int = 0  # first frame where it is visible (0: from the start)
    new_colour: str | None = None  # colour after a change, if it changes
    change: int | None = None  # first frame with the new colour

    @property
    def motion(self) -> str:
        (r0, c0), (r1, c1) = self.start, self.end
        if c1 > c0:
            return "right"
        if c1 < c0:
            return "left"
        if r1 < r0:
            return "up"
        if r1 > r0:
            return "down"
        return "stay"

    @property
    def final_colour(self) -> str:
        return self.new_colour or self.colour

    def colour_at(self, t: int) -> str | None:
        """Colour name at frame ``t``, None where the shape is not visible yet."""
        if t < self.appear:
            return None
        if self.change is not None and t >= self.change:
            return self.new_colour
        return self.colour


@dataclass(frozen=True)
class ClipTruth:
    """Everything a clip shows. Shapes are listed in ``KINDS`` order."""

    seed: int
    num_frames: int
    size: int
    background: tuple[int, int, int]
    shapes: tuple[ShapeTruth, ...]
    jitter: tuple[tuple[int, int, int], ...]  # per shape, added to its palette colour(s)

    def shape(self, kind: str) -> ShapeTruth | None:
        return next((s for s in self.shapes if s.kind == kind), None)

    def centre(self, shape: ShapeTruth, t: int) -> tuple[float, float]:
        """(x, y) pixel centre of ``shape`` at frame ``t`` (linear motion over its visible frames)."""
        x0, y0 = place_centre(shape.start, self.size)
        x1, y1 = place_centre(shape.end, self.size)
        span = self.num_frames - 1 - shape.appear
        a = 0.0 if span <= 0 else min(max((t - shape.appear) / span, 0.0), 1.0)
        return x0 + (x1 - x0) * a, y0 + (y1 - y0) * a


@dataclass(frozen=True)
class Example:
    """One training / evaluation example: a clip, a prompt about it and the expected answer."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    prompt: str
    answer: str
    truth: ClipTruth
    task: str  # "describe" or "question"
    qtype: str  # "describe", or the question type ("count", "colour", "direction", ...)


# --------------------------------------------------------------------------------------------
# geometry and drawing
# --------------------------------------------------------------------------------------------


def place_centre(cell: tuple[int, int], size: int = 64) -> tuple[int, int]:
    """(x, y) pixel centre of a 3x3 grid cell (row, col) in a ``size`` x ``size`` frame."""
    row, col = cell
    return round(size * (2 * col + 1) / 6), round(size * (2 * row + 1) / 6)


def _shape_size(size: int) -> int:
    return max(4, round(size * 14 / 64))


@functools.lru_cache(maxsize=None)
def _mask(kind: str, s: int) -> np.ndarray:
    """(s, s) bool mask of a shape, drawn once with PIL."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        draw.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif kind == "square":
        draw.rectangle([1, 1, s - 2, s - 2], fill=255)
    elif kind == "triangle":
        draw.polygon([((s - 1) / 2, 0), (s - 1, s - 1), (0, s - 1)], fill=255)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {KINDS}")
    return np.asarray(img) > 127


@functools.lru_cache(maxsize=None)
def _noise_pool(size: int) -> np.ndarray:
    """(64, size, size * 3) int16 frames of uniform integer noise; clips pick frames from it."""
    rng = np.random.default_rng(0x5EED)
    return rng.integers(-_NOISE, _NOISE + 1, size=(64, size, size * 3), dtype=np.int16)


def _placements(truth: ClipTruth):
    """(frame, shape index, top, left) of every drawn shape; masks are ``_shape_size`` squares."""
    s = _shape_size(truth.size)
    for i, shape in enumerate(truth.shapes):
        for t in range(shape.appear, truth.num_frames):
            cx, cy = truth.centre(shape, t)
            yield t, i, int(round(cy - s / 2)), int(round(cx - s / 2))


def render(truth: ClipTruth) -> np.ndarray:
    """The frames of ``truth``: (T, H, W, 3) uint8. The noise frames are picked by ``truth.seed``."""
    t_n, size = truth.num_frames, truth.size
    # (T, H, W * 3) layout: broadcasting a W * 3 row is much faster than a 3-vector.
    frames = np.empty((t_n, size, size * 3), dtype=np.int16)
    frames[:] = np.tile(np.asarray(truth.background, dtype=np.int16), size)
    frames = frames.reshape(t_n, size, size, 3)
    s = _shape_size(size)
    masks = [_mask(shape.kind, s) for shape in truth.shapes]
    rgb = [
        {name: np.add(COLOURS[name], jitter) for name in (shape.colour, shape.new_colour) if name}
        for shape, jitter in zip(truth.shapes, truth.jitter)
    ]
    for t, i, y, x in _placements(truth):
        frames[t, y : y + s, x : x + s][masks[i]] = rgb[i][truth.shapes[i].colour_at(t)]
    pool = _noise_pool(size)
    pick = np.random.default_rng([truth.seed, 0x5EED]).integers(0, len(pool), t_n)
    frames += pool[pick].reshape(t_n, size, size, 3)
    return np.clip(frames, 0, 255).astype(np.uint8)


def coverage(truth: ClipTruth, grid: int) -> np.ndarray:
    """(T, n_shapes, grid, grid) int: pixels of each shape in each cell of a ``grid`` x ``grid``
    partition of every frame (``grid`` must divide the frame size)."""
    size, s = truth.size, _shape_size(truth.size)
    if size % grid:
        raise ValueError(f"grid {grid} does not divide the frame size {size}")
    drawn = np.zeros((truth.num_frames, len(truth.shapes), size, size), dtype=bool)
    for t, i, y, x in _placements(truth):
        drawn[t, i, y : y + s, x : x + s] = _mask(truth.shapes[i].kind, s)
    c = size // grid
    return drawn.reshape(truth.num_frames, len(truth.shapes), grid, c, grid, c).sum(axis=(3, 5))


# --------------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------------


def _random_path(rng: random.Random) -> tuple[tuple[int, int], tuple[int, int]]:
    motion = rng.choice(("stay", "stay", "left", "right", "up", "down"))
    if motion == "stay":
        cell = (rng.randrange(3), rng.randrange(3))
        return cell, cell
    lane = rng.randrange(3)
    a = rng.randrange(2)  # start index 0 or 1 along the axis of motion
    b = rng.randrange(a + 1, 3)  # one or two places further
    if motion in ("left", "up"):
        a, b = 2 - a, 2 - b
    if motion in ("left", "right"):
        return (lane, a), (lane, b)
    return (a, lane), (b, lane)


def _overlaps(truth: ClipTruth) -> bool:
    gap = _shape_size(truth.size) + 2
    shapes = truth.shapes
    for i in range(len(shapes)):
        for j in range(i + 1, len(shapes)):
            for t in range(max(shapes[i].appear, shapes[j].appear), truth.num_frames):
                (xi, yi), (xj, yj) = truth.centre(shapes[i], t), truth.centre(shapes[j], t)
                if abs(xi - xj) < gap and abs(yi - yj) < gap:
                    return True
    return False


def _sample_truth(seed: int, num_frames: int, size: int) -> ClipTruth:
    rng = random.Random(f"specvlm-synthetic/{seed}/clip")
    background = tuple(rng.randrange(0, 41) for _ in range(3))
    n = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    while True:  # rejection sampling of non-overlapping layouts; a single shape always fits
        kinds = sorted(rng.sample(KINDS, n), key=KINDS.index)
        events = [rng.choices(("none", "appear", "change"), weights=(6, 2, 2))[0] for _ in kinds]
        if all(e == "appear" for e in events):
            events[0] = "none"  # something is visible in the first frame
        palette = rng.sample(list(COLOURS), n + events.count("change"))
        extra = iter(palette[n:])
        shapes = []
        for kind, event, colour in zip(kinds, events, palette):
            start, end = _random_path(rng)
            appear = rng.randrange(num_frames // 4, num_frames // 2 + 1) if event == "appear" else 0
            change = rng.randrange(num_frames // 3, 2 * num_frames // 3 + 1) if event == "change" else None
            new_colour = next(extra) if event == "change" else None
            shapes.append(ShapeTruth(kind, colour, start, end, appear, new_colour, change))
        jitter = tuple(tuple(rng.randint(-_JITTER, _JITTER) for _ in range(3)) for _ in kinds)
        truth = ClipTruth(seed, num_frames, size, background, tuple(shapes), jitter)
        if not _overlaps(truth):
            return truth


def make_clip(seed: int, *, num_frames: int = 16, size: int = 64) -> tuple[np.ndarray, ClipTruth]:
    """Frames ``(num_frames, size, size, 3)`` uint8 and ground truth of the clip of ``seed``."""
    if num_frames < 4:
        raise ValueError(f"num_frames must be >= 4, got {num_frames}")
    if size < 24 or size % 2:
        raise ValueError(f"size must be an even number >= 24, got {size}")
    truth = _sample_truth(seed, num_frames, size)
    return render(truth), truth


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------


def _at(cell: tuple[int, int]) -> str:
    """'in the top left corner', 'on the left', 'at the top', 'in the centre'."""
    name, prep = PLACES[cell]
    return f"{prep} {name}"


def _list_kinds(shapes) -> str:
    names = [f"the {s.kind}" for s in shapes]
    if not names:
        return "none"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _a(word: str) -> str:
    """'a red', 'an orange'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _sentence(shape: ShapeTruth) -> str:
    what = _a(f"{shape.colour} {shape.kind}")
    if shape.appear > 0:
        if shape.motion == "stay":
            return f"Later, {what} appears {_at(shape.start)}."
        return f"Later, {what} appears {_at(shape.start)} and moves to {PLACES[shape.end][0]}."
    if shape.motion == "stay":
        text = f"{what[0].upper()}{what[1:]} stays {_at(shape.start)}"
    else:
        text = f"{what[0].upper()}{what[1:]} moves from {PLACES[shape.start][0]} to {PLACES[shape.end][0]}"
    if shape.new_colour is not None:
        text += f" and turns {shape.new_colour}"
    return text + "."


def describe(truth: ClipTruth) -> str:
    """The clip's description: a count sentence, then one sentence per shape in ``KINDS`` order."""
    n = len(truth.shapes)
    head = f"The video shows {_NUMBERS[n]} shape{'s' if n > 1 else ''} on a dark background."
    return " ".join([head] + [_sentence(s) for s in truth.shapes])


def _questions(truth: ClipTruth) -> list[tuple[str, str, str]]:
    """(question, answer, question type), in a fixed order."""
    shapes = truth.shapes
    qa = [("How many shapes are there?", _NUMBERS[len(shapes)], "count")]
    movers = [s for s in shapes if s.motion != "stay"]
    qa.append(("How many shapes move?", _NUMBERS[len(movers)], "count_moving"))
    for kind in KINDS:
        s = truth.shape(kind)
        if s is None:
            qa.append((f"What colour is the {kind}?", f"there is no {kind}", "absent"))
            continue
        if s.new_colour is None:
            qa.append((f"What colour is the {kind}?", s.colour, "colour"))
        else:
            qa.append((f"What colour is the {kind} at the start?", s.colour, "colour_start"))
            qa.append((f"What colour is the {kind} at the end?", s.new_colour, "colour_end"))
            qa.append((f"What colour does the {kind} turn?", s.new_colour, "colour_change"))
        qa.append((f"Which way does the {kind} move?", _DIRECTION_ANSWER[s.motion], "direction"))
        qa.append((f"Where does the {kind} start?", _at(s.start), "place_start"))
        qa.append((f"Where is the {kind} at the end?", _at(s.end), "place_end"))
        if s.new_colour is None:
            qa.append((f"Which shape is {s.colour}?", f"the {kind}", "which_shape"))
    used = {c for s in shapes for c in (s.colour, s.new_colour) if c is not None}
    for s in shapes:
        qa.append((f"Is there {_a(s.colour)} shape?", "yes", "exists"))
    absent = [c for c in COLOURS if c not in used]
    pick = random.Random(f"specvlm-synthetic/{truth.seed}/absent").choice(absent)
    qa.append((f"Is there {_a(pick)} shape?", "no", "exists"))
    qa.append(("What shape changes colour?", _list_kinds([s for s in shapes if s.new_colour]), "changes"))
    qa.append(("What shape appears later?", _list_kinds([s for s in shapes if s.appear > 0]), "appears"))
    return qa


def questions(truth: ClipTruth) -> list[tuple[str, str]]:
    """Question/answer pairs about the clip, in a fixed order."""
    return [(q, a) for q, a, _ in _questions(truth)]


def make_example(
    seed: int,
    *,
    num_frames: int = 16,
    size: int = 64,
    task: str | None = None,
    describe_prob: float = 0.25,
) -> Example:
    """The clip of ``seed`` with a description prompt (probability ``describe_prob``) or one of its
    questions, chosen uniformly. ``task="describe"`` / ``"question"`` forces the kind."""
    if task not in (None, "describe", "question"):
        raise ValueError(f"task must be None, 'describe' or 'question', got {task!r}")
    frames, truth = make_clip(seed, num_frames=num_frames, size=size)
    rng = random.Random(f"specvlm-synthetic/{seed}/example")
    if task is None:
        task = "describe" if rng.random() < describe_prob else "question"
    if task == "describe":
        return Example(frames, rng.choice(DESCRIBE_PROMPTS), describe(truth), truth, "describe", "describe")
    q, a, qtype = rng.choice(_questions(truth))
    return Example(frames, q, a, truth, "question", qtype)


# --------------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------------


def corpus(num_clips: int = 300) -> list[str]:
    """Texts covering every word and phrase the task uses: templates filled with every colour,
    shape, place and number, plus the descriptions and questions of ``num_clips`` clips."""
    texts = list(DESCRIBE_PROMPTS)
    places = [name for name, _ in PLACES.values()]
    for kind in KINDS:
        for colour in COLOURS:
            what = _a(f"{colour} {kind}")
            texts.append(f"{what.capitalize()} stays in the centre and turns {colour}.")
            texts.append(f"Later, {what} appears on the left and moves to the right.")
            texts.append(f"Is there {_a(colour)} shape? Which shape is {colour}? the {kind}")
        texts.append(
            f"What colour is the {kind}? What colour is the {kind} at the start? "
            f"What colour is the {kind} at the end? What colour does the {kind} turn? there is no {kind}"
        )
        texts.append(f"Which way does the {kind} move? Where does the {kind} start? Where is the {kind} at the end?")
    for cell in PLACES:
        texts.append(f"It stays {_at(cell)}. It moves from {PLACES[cell][0]} to {places[-1]}.")
    texts += list(_DIRECTION_ANSWER.values())
    for n, word in enumerate(_NUMBERS):
        texts.append(f"The video shows {word} shape{'s' if n != 1 else ''} on a dark background. {word}")
    texts += ["How many shapes are there? How many shapes move? yes no",
              "What shape changes colour? What shape appears later? the circle, the square and the triangle"]
    for seed in range(num_clips):
        truth = _sample_truth(10_000_000 + seed, 16, 64)
        texts.append(describe(truth))
        texts += [f"{q} {a}" for q, a in questions(truth)]
    return texts


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def task_words() -> frozenset[str]:
    """Every lower-case word appearing in the task's prompts and answers."""
    words: set[str] = set()
    for text in corpus():
        words |= _words(text)
    return frozenset(words)
