"""Video loading and writing for specvlm.

What this module promises:

* ``load_video`` turns a video file (anything PyAV/FFmpeg demuxes: mp4, webm,
  mkv, avi, mov, ...), a folder of images, a numpy array or a list of PIL
  images into a :class:`VideoClip`: ``(T, H, W, 3)`` uint8 RGB frames in
  presentation order, the source timestamp of every returned frame and its
  index in the source (``VideoClip.indices``).
* Frame sampling is deterministic (no randomness anywhere):

  - ``num_frames=N``: indices ``np.linspace(0, total - 1, N).round()`` over
    the whole clip. If ``N`` exceeds the number of frames, every frame is
    returned once; frames are never duplicated to pad up to ``N``.
  - ``fps=F``: sampling instants ``t0 + k / F`` (``t0`` = first frame's
    timestamp, ``k = 0, 1, ...`` up to the last frame's timestamp); each
    instant takes the frame whose timestamp is nearest (ties go to the
    earlier frame). Duplicates are dropped, so ``F`` above the source rate
    yields every frame once. Only sources with timing (video files) support
    ``fps``.
  - ``max_frames=M``: after the above, if more than ``M`` frames remain they
    are uniformly subsampled (same linspace rule) down to ``M``.
  - neither ``num_frames`` nor ``fps``: every frame.

* Long videos are not held in memory: one demux-only pass counts frames and
  reads their timestamps, a second pass decodes and keeps only the selected
  frames (RGB conversion happens only for those).
* Every problem with the input raises :class:`VideoInputError` (a
  ``ValueError``) with a message naming the offending path/argument; a
  missing path raises :class:`VideoNotFoundError`, which is both a
  ``VideoInputError`` and a ``FileNotFoundError``; a path that is neither a
  regular file nor a folder (a FIFO, a device) is refused before it is opened. Raw PyAV exceptions do not
  escape ``load_video``.

Not handled: display-matrix rotation metadata (frames are returned as
stored), variable resolution streams are rescaled to the first returned
frame's size, only the first non-cover-art video stream is read.

``write_video`` writes a real, yuv420p-encoded video with PyAV; it is what the
tests and the tiny fixtures use to produce sample clips.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_MAX_VIDEO_PIXELS",
    "IMAGE_EXTENSIONS",
    "SERVED_MAX_VIDEO_PIXELS",
    "VideoClip",
    "VideoBudgetError",
    "VideoInputError",
    "VideoNotFoundError",
    "VideoTimeoutError",
    "check_max_pixels",
    "load_video",
    "write_video",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# The bounds on decoded frames x height x width applied unless told otherwise (load_video itself
# applies none unless given max_pixels). A local run (the command line, SpeculativeVLM.generate,
# bench, lmms-eval) serves long videos, the case speculation is for: 2 Gpx, about a thousand frames
# of 1080p (6 GiB of RGB). A server takes requests from anyone: 64 Mpx, 32 frames of 1080p (192 MiB).
DEFAULT_MAX_VIDEO_PIXELS = 2**31
SERVED_MAX_VIDEO_PIXELS = 2**26

VideoSource = Union[str, "os.PathLike[str]", np.ndarray, Sequence[Image.Image]]


class VideoInputError(ValueError):
    """The video source or a sampling argument is unusable."""


class VideoBudgetError(VideoInputError):
    """Decoding would exceed the caller's ``max_pixels`` (``pixels`` of ``frames`` frames of
    ``size`` against ``limit``) or pass its ``deadline``."""

    def __init__(self, message: str, *, frames: int = 0, size: tuple[int, int] = (0, 0), limit: int = 0):
        super().__init__(message)
        self.frames, self.size, self.limit = frames, size, limit

    @property
    def pixels(self) -> int:
        return self.frames * self.size[0] * self.size[1]


class VideoTimeoutError(VideoBudgetError):
    """Reading the video ran past the caller's ``deadline``."""


class VideoNotFoundError(VideoInputError, FileNotFoundError):
    """The given path does not exist (catchable as either parent class)."""


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make == ambiguous
class VideoClip:
    """Sampled frames of a video.

    ``frames`` is ``(T, H, W, 3)`` uint8 RGB in presentation order;
    ``timestamps[i]`` is the time in seconds of ``frames[i]`` in the source
    (for sources without timing, i.e. arrays, image lists and folders, it is
    the frame's index in the source, as a float). ``source_fps`` is the
    source's average frame rate when known.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    source_fps: float | None
    source: str
    # Index of each returned frame in the full source (presentation order),
    # so callers can tell which frames were picked; defaults to 0..T-1.
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        f = self.frames
        if not (isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 4
                and f.shape[-1] == 3 and f.shape[0] >= 1):
            raise VideoInputError(
                f"VideoClip.frames must be a (T, H, W, 3) uint8 array with T >= 1, "
                f"got {_describe_array(f)}"
            )
        ts = np.asarray(self.timestamps, dtype=np.float64)
        if ts.shape != (f.shape[0],):
            raise VideoInputError(
                f"VideoClip.timestamps must have shape ({f.shape[0]},), got {ts.shape}"
            )
        object.__setattr__(self, "timestamps", ts)
        idx = self.indices
        idx = np.arange(f.shape[0]) if idx is None else np.asarray(idx, dtype=np.int64)
        if idx.shape != (f.shape[0],):
            raise VideoInputError(
                f"VideoClip.indices must have shape ({f.shape[0]},), got {idx.shape}"
            )
        object.__setattr__(self, "indices", idx)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def to_pil(self) -> list[Image.Image]:
        return [Image.fromarray(frame) for frame in self.frames]

    def __repr__(self) -> str:
        return (
            f"VideoClip(num_frames={self.num_frames}, height={self.height}, "
            f"width={self.width}, source_fps={self.source_fps}, source={self.source!r})"
        )


# --------------------------------------------------------------------------
# argument validation and index selection


def check_max_pixels(max_pixels: object, name: str = "max_pixels") -> None:
    """VideoInputError (a ValueError) naming ``name`` unless ``max_pixels`` is an integer >= 1 or None."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1
    ):
        raise VideoInputError(
            f"{name} must be an integer >= 1 (frames x height x width) or None (no bound), "
            f"got {name}={max_pixels!r}"[:300]
        )


def _check_args(num_frames: object, fps: object, max_frames: object) -> None:
    if num_frames is not None and fps is not None:
        raise VideoInputError(
            f"give at most one of num_frames / fps, got num_frames={num_frames!r} and fps={fps!r}"
        )
    for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
        if value is None:
            continue
        # bool is an int subclass; True as a frame count is surely a bug.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise VideoInputError(f"{name} must be an integer >= 1, got {name}={value!r}")
    if fps is not None:
        ok = isinstance(fps, numbers.Real) and not isinstance(fps, bool)
        if not ok or not math.isfinite(float(fps)) or float(fps) <= 0:
            raise VideoInputError(f"fps must be a finite number > 0, got fps={fps!r}")


def _uniform_indices(total: int, n: int) -> np.ndarray:
    if n >= total:
        return np.arange(total, dtype=np.int64)
    # Step (total-1)/(n-1) >= 1 when n <= total, so rounding never collides.
    return np.linspace(0, total - 1, n).round().astype(np.int64)


def _fps_indices(times: np.ndarray, fps: float) -> np.ndarray:
    t0, t_last = float(times[0]), float(times[-1])
    # Small slack so that a last frame sitting exactly on a sampling instant
    # is not lost to float error.
    count = int(math.floor((t_last - t0) * fps + 1e-6)) + 1
    if count > 8 * len(times):
        return _fps_indices_dense(times, t0, fps, count)
    targets = t0 + np.arange(count, dtype=np.float64) / fps
    right = np.searchsorted(times, targets, side="left").clip(0, len(times) - 1)
    left = (right - 1).clip(0, None)
    # Nearest frame; ties (and equal distance) go to the earlier frame.
    pick = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)
    return np.unique(pick)


def _fps_indices_dense(times: np.ndarray, t0: float, fps: float, count: int) -> np.ndarray:
    """The same picks when instants far outnumber frames, without listing the instants. Of a run of
    equal times u, an instant in (previous midpoint, u] picks its first frame, one in (u, next
    midpoint] its last (as the nearest-frame search above does)."""
    first = np.flatnonzero(np.r_[True, np.diff(times) > 0])
    last = np.r_[first[1:] - 1, len(times) - 1]
    u = times[first]
    mids = (u[:-1] + u[1:]) / 2
    lo, hi = np.r_[-np.inf, mids], np.r_[mids, np.inf]

    def any_instant(a, b):  # an instant t0 + k / fps, 0 <= k < count, in (a, b]
        with np.errstate(over="ignore", invalid="ignore"):
            k = np.where(np.isinf(a), 0.0, np.floor((a - t0) * fps) + 1).clip(0, None)
            return (k <= count - 1) & (t0 + k / fps <= b)

    picks = np.r_[first[any_instant(lo, u)], last[any_instant(u, hi)]]
    return np.unique(picks).astype(np.int64)


def _select(total: int, times: np.ndarray | None, num_frames: int | None,
            fps: float | None, max_frames: int | None) -> np.ndarray:
    if num_frames is not None:
        sel = _uniform_indices(total, int(num_frames))
    elif fps is not None:
        assert times is not None  # callers without timing reject fps earlier
        sel = _fps_indices(times, float(fps))
    else:
        sel = np.arange(total, dtype=np.int64)
    if max_frames is not None and len(sel) > max_frames:
        sel = sel[_uniform_indices(len(sel), int(max_frames))]
    return sel


def _describe_array(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"shape {a.shape} dtype {a.dtype}"
    return f"{type(a).__name__}"


def _no_timing_error(kind: str) -> VideoInputError:
    return VideoInputError(
        f"fps sampling needs timing information, but a {kind} has none; "
        f"use num_frames=... (or no sampling argument) instead"
    )


# --------------------------------------------------------------------------
# in-memory sources


def _from_array(arr: np.ndarray, num_frames: int | None, fps: float | None,
                max_frames: int | None) -> VideoClip:
    expected = "expected a (T, H, W, 3) or (H, W, 3) uint8 RGB array"
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            raise VideoInputError(
                f"{expected}, got float array ({_describe_array(arr)}); convert it first, "
                f"e.g. (x * 255).round().clip(0, 255).astype(np.uint8) for values in [0, 1]"
            )
        raise VideoInputError(f"{expected}, got {_describe_array(arr)}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or min(arr.shape[:3]) < 1:
        raise VideoInputError(f"{expected}, got {_describe_array(arr)}")
    if fps is not None:
        raise _no_timing_error("numpy array")
    sel = _select(arr.shape[0], None, num_frames, fps, max_frames)
    # Fancy indexing copies: the clip never aliases the caller's buffer.
    return VideoClip(arr[sel], sel.astype(np.float64), None, "array", sel)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _from_images(images: Sequence[object], num_frames: int | None, fps: float | None,
                 max_frames: int | None) -> VideoClip:
    if len(images) == 0:
        raise VideoInputError("expected a non-empty list of PIL images, got an empty sequence")
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise VideoInputError(
                f"expected a list of PIL images, but item {i} is {type(img).__name__}"
            )
    if fps is not None:
        raise _no_timing_error("list of images")
    size0 = images[0].size  # type: ignore[union-attr]
    for i, img in enumerate(images):
        if img.size != size0:  # type: ignore[union-attr]
            raise VideoInputError(
                f"all images must have the same size; image 0 is {size0[0]}x{size0[1]} "
                f"(WxH) but image {i} is {img.size[0]}x{img.size[1]}"  # type: ignore[union-attr]
            )
    sel = _select(len(images), None, num_frames, fps, max_frames)
    frames = np.stack([_pil_to_rgb(images[i]) for i in sel])  # type: ignore[arg-type]
    return VideoClip(frames, sel.astype(np.float64), None, "pil_images", sel)


# --------------------------------------------------------------------------
# folder of images


def _natural_key(name: str) -> tuple:
    # re.split with a capture group alternates text/digits, so positions
    # always compare str with str and int with int.
    parts = re.split(r"(\d+)", name.lower())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def _from_folder(folder: str, num_frames: int | None, fps: float | None,
                 max_frames: int | None, max_pixels: int | None = None) -> VideoClip:
    accepted = ", ".join(IMAGE_EXTENSIONS)
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it
                     if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    except OSError as e:  # PermissionError, NotADirectoryError, ...
        raise VideoInputError(
            f"cannot read image folder {folder} ({e.strerror or e}); "
            f"expected a readable folder of images ({accepted})"
        ) from e
    if not names:
        raise VideoInputError(
            f"no images found in folder {folder}; accepted extensions: {accepted}"
        )
    if fps is not None:
        raise _no_timing_error("folder of images")
    names.sort(key=_natural_key)
    sel = _select(len(names), None, num_frames, fps, max_frames)
    budget = _Budget(folder, max_pixels, None)
    frames: list[np.ndarray] = []
    for i in sel:
        path = os.path.join(folder, names[i])
        try:
            with Image.open(path) as img:  # reads the header only: the size is known before decoding
                if not frames:  # the first image's size is every frame's (others are refused below)
                    budget.check_pixels(len(sel), img.size[0], img.size[1], f"(as {names[i]} declares)")
                arr = _pil_to_rgb(img)
        except VideoBudgetError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise VideoInputError(f"cannot read image {path} ({e})") from e
        if frames and arr.shape != frames[0].shape:
            first = os.path.join(folder, names[sel[0]])
            raise VideoInputError(
                f"all images must have the same size; {first} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} (WxH) but {path} is "
                f"{arr.shape[1]}x{arr.shape[0]}"
            )
        frames.append(arr)
    return VideoClip(np.stack(frames), sel.astype(np.float64), None, folder, sel)


# --------------------------------------------------------------------------
# video files through PyAV


def _av():
    # Imported lazily so that array/folder users do not pay for (or need) av.
    import av

    return av


def _av_reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _open_container(path: str):
    av = _av()
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoInputError(f"not a readable video: {path} ({_av_reason(e)})") from e
    fmt = container.format.name
    # FFmpeg happily "demuxes" a lone PNG/JPEG as a one-frame stream; a single
    # image is almost certainly a mistake for a video argument, so say so.
    if fmt.endswith("_pipe") or fmt == "image2":
        container.close()
        raise VideoInputError(
            f"not a readable video: {path} (it is a single image file, format {fmt}); "
            f"pass a folder of images, a list of PIL images or an array instead"
        )
    return container


def _video_stream(container, path: str):
    av = _av()
    streams = [
        s for s in container.streams.video
        # Cover art in audio files shows up as a one-frame video stream.
        if not (s.disposition & av.stream.Disposition.attached_pic)
    ]
    if not streams:
        container.close()
        raise VideoInputError(f"no decodable video frames in {path} (it has no video stream)")
    if streams[0].codec_context is None:  # a codec FFmpeg does not know (a corrupt sample description, say)
        container.close()
        raise VideoInputError(f"no decodable video frames in {path} (its video codec is unknown to FFmpeg: "
                              "a corrupt or unsupported file)")  # fmt: skip
    return streams[0]


@dataclass
class _Probe:
    times: np.ndarray | None  # sorted presentation times, None if unknown
    count: int
    avg_fps: float | None
    error: str | None
    size: tuple[int, int]  # (width, height) the stream declares


class _Budget:
    """Bounds on one load: pixels of the frames kept, and a time.monotonic() deadline."""

    def __init__(self, path: str, max_pixels: int | None, deadline: float | None):
        self.path, self.max_pixels, self.deadline = path, max_pixels, deadline

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise VideoTimeoutError(f"{self.path}: reading the video ran past its time limit")

    def check_pixels(self, frames: int, width: int, height: int, where: str) -> None:
        if self.max_pixels is not None and frames * width * height > self.max_pixels:
            raise VideoBudgetError(
                f"{self.path}: {frames} frames of {width}x{height} {where} are {frames * width * height:,} "
                f"pixels, more than the limit of {self.max_pixels:,}: ask for fewer frames",
                frames=frames, size=(width, height), limit=self.max_pixels,
            )


def _probe(path: str, budget: _Budget) -> _Probe:
    """Demux-only pass: count video packets and collect their pts."""
    av = _av()
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        avg = float(stream.average_rate) if stream.average_rate else None
        tb = stream.time_base
        size = (int(stream.codec_context.width or 0), int(stream.codec_context.height or 0))
        pts: list[int | None] = []
        error = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # end-of-stream flush packet
                    continue
                pts.append(packet.pts if packet.pts is not None else packet.dts)
                if len(pts) % 256 == 0:
                    budget.check_time()
        except av.FFmpegError as e:
            # Truncated/corrupt tail: keep what could be read.
            error = _av_reason(e)
    finally:
        container.close()
    times = None
    if pts and tb is not None and all(p is not None for p in pts):
        # Packets come in decode order; B-frames make that differ from
        # presentation order, which is what frame indices refer to.
        times = np.sort(np.array(pts, dtype=np.float64)) * float(tb)
    return _Probe(times, len(pts), avg, error, size)


@dataclass
class _Decoded:
    kept: dict[int, tuple[np.ndarray, float | None]]
    times: list[float | None]  # per decoded frame, presentation order
    complete: bool  # decoded to the end of the stream
    errors: list[str]


def _decode(path: str, selected: np.ndarray, stop_early: bool, budget: _Budget) -> _Decoded:
    """Decode in presentation order, converting only frames in ``selected``."""
    av = _av()
    wanted = set(int(i) for i in selected)
    last = int(selected.max()) if len(selected) else -1
    kept: dict[int, tuple[np.ndarray, float | None]] = {}
    times: list[float | None] = []
    errors: list[str] = []
    size: tuple[int, int] | None = None
    complete = True
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame+slice threading; output order unchanged
        if budget.max_pixels is not None:  # no one frame past the whole budget is allocated, kept or not
            stream.codec_context.options = {"max_pixels": str(min(budget.max_pixels, 2**31 - 1))}
        packets = container.demux(stream)
        done = False
        while not done:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as e:
                errors.append(_av_reason(e))
                break
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                # A corrupt packet: skip it like ffmpeg does, keep decoding.
                errors.append(_av_reason(e))
                continue
            budget.check_time()
            for frame in frames:
                i = len(times)
                t = float(frame.time) if frame.time is not None else None
                times.append(t)
                if i in wanted:
                    if size is None:  # every kept frame takes this size: the stream's declared one may lie
                        size = (frame.width, frame.height)
                        budget.check_pixels(len(selected), *size, "decoded")
                    if (frame.width, frame.height) != size:
                        frame = frame.reformat(width=size[0], height=size[1])
                    kept[i] = (frame.to_ndarray(format="rgb24"), t)
                if stop_early and i >= last:
                    done, complete = True, False
                    break
    finally:
        container.close()
    return _Decoded(kept, times, complete, errors)


def _fill_times(times: Sequence[float | None], fallback: np.ndarray | None,
                avg_fps: float | None) -> np.ndarray:
    """Per-frame times (index = source frame index); gaps from ``fallback``
    (the probe's packet times) or, failing that, index / average fps."""
    out = np.empty(len(times), dtype=np.float64)
    for i, t in enumerate(times):
        if t is not None:
            out[i] = t
        elif fallback is not None and i < len(fallback):
            out[i] = fallback[i]
        else:
            out[i] = i / avg_fps if avg_fps else float(i)
    return out


def _from_file(path: str, num_frames: int | None, fps: float | None,
               max_frames: int | None, budget: _Budget) -> VideoClip:
    probe = _probe(path, budget)
    if probe.count == 0:
        reason = f" ({probe.error})" if probe.error else ""
        raise VideoInputError(f"no decodable video frames in {path}{reason}")
    times = probe.times
    if times is None:
        times = _fill_times([None] * probe.count, None, probe.avg_fps)
    sel = _select(probe.count, times, num_frames, fps, max_frames)
    budget.check_pixels(len(sel), *probe.size, "selected")  # before decoding, from the metadata
    # Decode to the end whenever the last frame is wanted anyway: it costs
    # nothing extra and verifies that the packet count matched the frame count.
    dec = _decode(path, sel, stop_early=int(sel[-1]) < probe.count - 1, budget=budget)
    # Stopping early implies every selected index was reached, so a mismatch
    # below always comes from a complete pass and dec.times covers the stream.
    if len(dec.kept) < len(sel) or (dec.complete and len(dec.times) != probe.count):
        # Packet count != decodable frame count (corrupt packets, discarded
        # or invisible frames): select again on what actually decodes.
        if not dec.times:
            reason = f" ({dec.errors[-1]})" if dec.errors else ""
            raise VideoInputError(f"no decodable video frames in {path}{reason}")
        times = _fill_times(dec.times, None, probe.avg_fps)
        sel = _select(len(times), times, num_frames, fps, max_frames)
        if not set(int(i) for i in sel) <= dec.kept.keys():
            dec = _decode(path, sel, stop_early=False, budget=budget)
        sel = np.array([i for i in sel if int(i) in dec.kept], dtype=np.int64)
        if len(sel) == 0:  # decoding is deterministic; this is only a guard
            raise VideoInputError(f"no decodable video frames in {path}")
    if dec.errors:
        warnings.warn(
            f"{path}: {len(dec.errors)} decoding error(s) ignored, last: {dec.errors[-1]}",
            RuntimeWarning,
            stacklevel=3,
        )
    frames = np.stack([dec.kept[int(i)][0] for i in sel])
    ts = np.array(
        [t if t is not None else float(times[i])
         for i, t in ((int(i), dec.kept[int(i)][1]) for i in sel)],
        dtype=np.float64,
    )
    return VideoClip(frames, ts, probe.avg_fps, path, sel)


# --------------------------------------------------------------------------
# public API


def load_video(
    source: VideoSource,
    num_frames: int | None = None,
    fps: float | None = None,
    *,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    deadline: float | None = None,
) -> VideoClip:
    """Load (and optionally sample) a video; see the module docstring.

    ``source`` is a path to a video file or to a folder of images
    (``IMAGE_EXTENSIONS``, natural name order so ``frame2`` < ``frame10``), a
    ``(T, H, W, 3)`` / ``(H, W, 3)`` uint8 array, or a list/tuple of PIL
    images of equal size. Give at most one of ``num_frames`` / ``fps``;
    ``max_frames`` caps the result by uniform subsampling. For video files and folders of images,
    ``max_pixels`` bounds frames x height x width of the result (checked from the container's
    metadata or the images' headers before decoding, and for files again on the frames as they
    decode; any one frame larger than it, kept or not, is never decoded: a decoding error); for video
    files ``deadline`` (a ``time.monotonic()`` value) bounds the time spent; past either,
    :class:`VideoBudgetError`. Arrays and PIL images are already in memory: not bounded.
    """
    _check_args(num_frames, fps, max_frames)
    check_max_pixels(max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, num_frames, fps, max_frames)
    if isinstance(source, (list, tuple)):
        return _from_images(source, num_frames, fps, max_frames)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not isinstance(path, str):
            raise VideoInputError(f"expected a str path, got bytes path {path!r}")
        if not os.path.exists(path):
            raise VideoNotFoundError(f"video path does not exist: {path}")
        if os.path.isdir(path):
            return _from_folder(path, num_frames, fps, max_frames, max_pixels)
        if not os.path.isfile(path):  # opening a FIFO waits for a writer; a device never ends
            raise VideoInputError(
                f"not a regular file: {path} (a FIFO, socket or device); the video is read twice "
                f"(to count frames, then to decode), so give a file"
            )
        return _from_file(path, num_frames, fps, max_frames, _Budget(path, max_pixels, deadline))
    raise VideoInputError(
        f"unsupported video source of type {type(source).__name__}; expected a path, "
        f"a folder of images, a (T, H, W, 3) uint8 numpy array or a list of PIL images "
        f"(convert tensors with .numpy())"
    )


# Codec candidates per container, in order of preference.
_CODECS_BY_EXT: dict[str, tuple[str, ...]] = {
    ".mp4": ("libx264", "mpeg4"),
    ".mkv": ("libx264", "mpeg4"),
    ".mov": ("libx264", "mpeg4"),
    ".webm": ("libvpx", "libvpx-vp9"),
    ".avi": ("mpeg4",),
}


def _encoder_available(name: str) -> bool:
    av = _av()
    try:
        av.Codec(name, "w")
    except (ValueError, av.FFmpegError):  # UnknownCodecError is a ValueError
        return False
    return True


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: float = 8.0,
    codec: str | None = None,
) -> Path:
    """Encode ``(T, H, W, 3)`` uint8 RGB ``frames`` to ``path`` with PyAV.

    The codec defaults from the extension (.mp4/.mkv/.mov: libx264, else
    mpeg4; .webm: libvpx (VP8), else libvpx-vp9; .avi: mpeg4). Pixels are
    encoded as yuv420p, which needs even width and height. Encoding is lossy:
    decoded frames differ slightly from ``frames``. Returns the path.
    """
    av = _av()
    out = Path(path)
    arr = frames
    if not (isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 4
            and arr.shape[-1] == 3 and min(arr.shape[:3]) >= 1):
        raise VideoInputError(
            f"write_video expects a (T, H, W, 3) uint8 array with T >= 1, got {_describe_array(arr)}"
        )
    t, h, w, _ = arr.shape
    if h % 2 or w % 2:
        raise VideoInputError(
            f"write_video encodes yuv420p, which needs even width and height; got {w}x{h} (WxH)"
        )
    _check_args(None, fps, None)
    ext = out.suffix.lower()
    if codec is None:
        if ext not in _CODECS_BY_EXT:
            raise VideoInputError(
                f"cannot pick a codec for extension {ext!r} of {out}; use one of "
                f"{', '.join(_CODECS_BY_EXT)} or pass codec=..."
            )
        candidates = _CODECS_BY_EXT[ext]
        codec = next((c for c in candidates if _encoder_available(c)), None)
        if codec is None:
            raise VideoInputError(
                f"none of the encoders {candidates} for {ext} is available in this PyAV build"
            )
    elif not _encoder_available(codec):
        raise VideoInputError(f"encoder {codec!r} is not available in this PyAV build")

    # Fraction rate: mpeg4 rejects time bases with huge denominators.
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(str(out), mode="w")
    try:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec in ("libx264", "h264"):
            stream.options = {"crf": "18"}
        else:
            # Encoders' default bitrates (~200 kbit/s) are far too low for
            # anything but thumbnails; aim for ~0.25 bit per pixel.
            stream.bit_rate = int(min(max(w * h * float(rate) * 0.25, 400_000), 20_000_000))
            if codec.startswith("libvpx"):
                stream.options = {"crf": "10"}
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr[i]), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed (B-)frames
            container.mux(packet)
    finally:
        container.close()
    return out
