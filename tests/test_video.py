"""Tests for specvlm.video: real encoded videos written with PyAV into tmp_path.

Frames carry their index as a grey level (10 * i) so that, after lossy
compression, we can still tell WHICH source frames were sampled.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from specvlm import video as video_mod
from specvlm.testing.memory import rss_growth
from specvlm.video import (
    VideoClip,
    VideoInputError,
    VideoNotFoundError,
    load_video,
    write_video,
)

N_FRAMES = 24
FPS = 8.0
SIZE = 32
TOL = 6.0  # grey levels; frames are 10 apart, codec error observed <= 3


def grey_frames(n: int = N_FRAMES, size: int = SIZE) -> np.ndarray:
    return np.stack([np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)])


def frame_ids(frames: np.ndarray, region: slice = slice(None)) -> np.ndarray:
    """Recover each frame's source index from its mean grey level."""
    means = frames[:, region].reshape(len(frames), -1).mean(axis=1)
    ids = np.round(means / 10).astype(int)
    assert np.all(np.abs(means - 10 * ids) <= TOL), means
    return ids


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    frames = grey_frames()
    return {ext: write_video(d / f"clip.{ext}", frames, fps=FPS)
            for ext in ("mp4", "webm", "mkv", "avi", "mov")}


# --------------------------------------------------------------------------
# containers round-trip


@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv", "avi", "mov"])
def test_container_roundtrip(videos, ext):
    clip = load_video(videos[ext])
    assert isinstance(clip, VideoClip)
    assert clip.num_frames == N_FRAMES
    assert (clip.height, clip.width) == (SIZE, SIZE)
    assert clip.frames.shape == (N_FRAMES, SIZE, SIZE, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.source_fps == pytest.approx(FPS)
    assert clip.source == str(videos[ext])
    np.testing.assert_array_equal(frame_ids(clip.frames), np.arange(N_FRAMES))
    np.testing.assert_allclose(clip.timestamps, np.arange(N_FRAMES) / FPS, atol=1e-3)
    assert clip.timestamps.dtype == np.float64
    pil = clip.to_pil()
    assert len(pil) == N_FRAMES and pil[0].size == (SIZE, SIZE) and pil[0].mode == "RGB"


def test_pathlike_and_str_accepted(videos):
    assert load_video(str(videos["mp4"])).num_frames == load_video(videos["mp4"]).num_frames


def test_webm_reports_zero_frames_but_is_counted(videos):
    # Matroska/WebM headers carry no frame count; counting must not rely on it.
    with av.open(str(videos["webm"])) as c:
        assert c.streams.video[0].frames == 0
    assert load_video(videos["webm"]).num_frames == N_FRAMES


# --------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("ext", ["mp4", "webm"])
@pytest.mark.parametrize("n", [1, 2, 5, 7, 24])
def test_uniform_num_frames(videos, ext, n):
    clip = load_video(videos[ext], num_frames=n)
    expected = np.linspace(0, N_FRAMES - 1, n).round().astype(int)
    np.testing.assert_array_equal(clip.indices, expected)
    np.testing.assert_array_equal(frame_ids(clip.frames), expected)
    np.testing.assert_allclose(clip.timestamps, expected / FPS, atol=1e-3)


def test_num_frames_above_total_returns_all_without_duplicates(videos):
    clip = load_video(videos["mkv"], num_frames=100)
    assert clip.num_frames == N_FRAMES
    np.testing.assert_array_equal(frame_ids(clip.frames), np.arange(N_FRAMES))


@pytest.mark.parametrize(
    "fps, expected",
    [
        (2.0, [0, 4, 8, 12, 16, 20]),             # one frame every 0.5 s
        (1.0, [0, 8, 16]),
        (4.0, list(range(0, 24, 2))),
        (8.0, list(range(24))),                   # equal to source rate
        (100.0, list(range(24))),                 # above source rate: no duplicates
        (3.0, [0, 3, 5, 8, 11, 13, 16, 19, 21]),  # nearest frame to k/3 s
    ],
)
@pytest.mark.parametrize("ext", ["mp4", "webm", "avi"])
def test_fps_sampling(videos, ext, fps, expected):
    clip = load_video(videos[ext], fps=fps)
    np.testing.assert_array_equal(clip.indices, expected)
    np.testing.assert_array_equal(frame_ids(clip.frames), expected)
    np.testing.assert_allclose(clip.timestamps, np.array(expected) / FPS, atol=1e-3)


def test_fps_timestamps_spacing(videos):
    clip = load_video(videos["mov"], fps=2)
    np.testing.assert_allclose(np.diff(clip.timestamps), 0.5, atol=1e-3)


def test_max_frames_caps_after_fps(videos):
    clip = load_video(videos["mp4"], fps=4, max_frames=4)  # fps gives 0,2,...,22
    sel = np.arange(0, 24, 2)[np.linspace(0, 11, 4).round().astype(int)]
    np.testing.assert_array_equal(frame_ids(clip.frames), sel)
    assert clip.num_frames == 4


def test_max_frames_caps_all_frames_and_noop_when_larger(videos):
    np.testing.assert_array_equal(load_video(videos["mp4"], max_frames=3).indices, [0, 12, 23])
    assert load_video(videos["mp4"], max_frames=1000).num_frames == N_FRAMES


def test_bframes_presentation_order(tmp_path):
    # Moving texture makes x264 emit B-frames (packet order != display
    # order); a grey stripe on top encodes the frame index.
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, i, axis=1) for i in range(N_FRAMES)])
    frames[:, :8] = (10 * np.arange(N_FRAMES, dtype=np.uint8))[:, None, None, None]
    path = write_video(tmp_path / "bframes.mp4", frames, fps=FPS)
    with av.open(str(path)) as c:
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    assert pts != sorted(pts), "fixture should contain B-frames"

    clip = load_video(path, num_frames=7)
    expected = np.linspace(0, N_FRAMES - 1, 7).round().astype(int)
    np.testing.assert_array_equal(frame_ids(clip.frames, slice(0, 8)), expected)
    np.testing.assert_allclose(clip.timestamps, expected / FPS, atol=1e-3)
    clip = load_video(path, fps=2)
    np.testing.assert_array_equal(frame_ids(clip.frames, slice(0, 8)), [0, 4, 8, 12, 16, 20])
    full = load_video(path)
    np.testing.assert_array_equal(frame_ids(full.frames, slice(0, 8)), np.arange(N_FRAMES))
    assert np.all(np.diff(full.timestamps) > 0)


def test_packet_count_mismatch_reselects(videos, monkeypatch):
    # Simulate a stream whose packet count overstates the decodable frames
    # (e.g. discarded/corrupt packets): selection must follow decoded frames.
    real_probe = video_mod._probe

    def fake_probe(path, budget):
        p = real_probe(path, budget)
        times = np.concatenate([p.times, p.times[-1] + np.array([1, 2]) / FPS])
        return video_mod._Probe(times, p.count + 2, p.avg_fps, None, p.size)

    monkeypatch.setattr(video_mod, "_probe", fake_probe)
    clip = load_video(videos["mp4"], num_frames=5)
    expected = np.linspace(0, N_FRAMES - 1, 5).round().astype(int)
    np.testing.assert_array_equal(frame_ids(clip.frames), expected)
    assert load_video(videos["mp4"]).num_frames == N_FRAMES


# --------------------------------------------------------------------------
# folders, arrays, PIL lists


def test_folder_natural_sort(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = grey_frames(12, 16)
    for i, f in enumerate(frames):
        # Mixed extensions and case; lexicographic order would put 10 before 2.
        ext = [".png", ".PNG", ".bmp"][i % 3]
        Image.fromarray(f).save(folder / f"frame_{i}{ext}")
    (folder / "notes.txt").write_text("ignored")
    (folder / "sub").mkdir()

    clip = load_video(folder)
    assert clip.num_frames == 12
    np.testing.assert_array_equal(clip.frames, frames)  # lossless formats
    assert clip.source_fps is None
    np.testing.assert_array_equal(clip.timestamps, np.arange(12.0))
    assert clip.source == str(folder)

    clip = load_video(str(folder), num_frames=4)
    np.testing.assert_array_equal(clip.frames, frames[[0, 4, 7, 11]])


def test_folder_jpeg_and_rgba(tmp_path):
    folder = tmp_path / "jpg"
    folder.mkdir()
    Image.new("RGB", (16, 8), (200, 10, 10)).save(folder / "a1.jpg")
    Image.new("RGBA", (16, 8), (10, 200, 10, 128)).save(folder / "a2.png")
    Image.new("L", (16, 8), 77).save(folder / "a3.jpeg")
    clip = load_video(folder)
    assert clip.frames.shape == (3, 8, 16, 3)
    assert abs(int(clip.frames[0, 0, 0, 0]) - 200) < 8
    assert tuple(clip.frames[1, 0, 0]) == (10, 200, 10)
    assert tuple(clip.frames[2, 0, 0]) == (77, 77, 77)


def test_numpy_array():
    frames = grey_frames(10, 8)
    clip = load_video(frames, num_frames=3)
    np.testing.assert_array_equal(clip.frames, frames[[0, 4, 9]])
    np.testing.assert_array_equal(clip.timestamps, [0.0, 4.0, 9.0])
    assert clip.source == "array" and clip.source_fps is None
    full = load_video(frames)
    np.testing.assert_array_equal(full.frames, frames)
    full.frames[0] = 255  # the clip owns a copy
    assert frames[0].max() == 0


def test_single_frame_array():
    frame = np.zeros((6, 4, 3), np.uint8)
    clip = load_video(frame)
    assert clip.frames.shape == (1, 6, 4, 3)
    assert (clip.height, clip.width) == (6, 4)


def test_pil_list():
    imgs = [Image.fromarray(f) for f in grey_frames(5, 8)]
    imgs[1] = imgs[1].convert("L")  # mode is normalised to RGB
    clip = load_video(imgs)
    assert clip.frames.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(clip.frames[:, 0, 0, 0], [0, 10, 20, 30, 40])
    assert clip.source == "pil_images"
    assert load_video(tuple(imgs), num_frames=2).num_frames == 2


# --------------------------------------------------------------------------
# errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_video(missing)
    with pytest.raises(VideoInputError, match="does not exist"):
        load_video(str(missing))
    with pytest.raises(VideoNotFoundError):
        load_video(missing)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_video(fifo, num_frames=4)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # blocked in open(), waiting for a writer: let it go, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
        pytest.fail("load_video waited on a FIFO instead of refusing it")
    assert isinstance(outcome[0], VideoInputError) and "not a regular file" in str(outcome[0])


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "fake.mp4"
    p.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoInputError, match=r"not a readable video: .*fake\.mp4 \(.+\)"):
        load_video(p)


def test_single_image_file_is_not_a_video(tmp_path):
    p = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(p)
    with pytest.raises(VideoInputError, match=r"not a readable video: .*still\.png.*folder of images"):
        load_video(p)


def test_audio_only_file(tmp_path):
    p = tmp_path / "audio.mkv"
    with av.open(str(p), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    with pytest.raises(VideoInputError, match=r"no decodable video frames in .*audio\.mkv"):
        load_video(p)


def test_video_stream_without_frames(tmp_path):
    # AVI keeps a header-only file readable (mkv/webm fail to open: EOF).
    p = tmp_path / "empty.avi"
    with av.open(str(p), "w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(8))
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        c.start_encoding()  # write the header although no frame follows
    with pytest.raises(VideoInputError, match=r"no decodable video frames in .*empty\.avi"):
        load_video(p)


def test_truncated_mp4(videos, tmp_path):
    data = videos["mp4"].read_bytes()
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])  # moov atom is at the end: lost
    with pytest.raises(VideoInputError, match=r"(not a readable video|no decodable video frames).*cut\.mp4"):
        load_video(p)


def test_unknown_codec_is_named(videos, tmp_path):
    """One fourcc changed in the sample description (avc1 -> zzzz): the stream opens with no codec
    context (reading its size raised AttributeError)."""
    data = videos["mp4"].read_bytes()
    at = data.rfind(b"avc1")
    assert at > 0
    p = tmp_path / "zzzz.mp4"
    p.write_bytes(data[:at] + b"zzzz" + data[at + 4 :])
    with pytest.raises(VideoInputError, match=r"no decodable video frames in .*zzzz\.mp4 \(its video codec is unknown"):
        load_video(p)


def test_truncated_mkv_keeps_readable_prefix(tmp_path):
    path = write_video(tmp_path / "long.mkv", grey_frames(), fps=FPS)
    data = path.read_bytes()
    header_only = tmp_path / "head.mkv"
    header_only.write_bytes(data[:40])
    with pytest.raises(VideoInputError, match=r"head\.mkv"):
        load_video(header_only)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    clip = load_video(cut)
    assert 1 <= clip.num_frames < N_FRAMES
    np.testing.assert_array_equal(frame_ids(clip.frames), np.arange(clip.num_frames))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_frames": 0}, r"num_frames.*num_frames=0"),
    ({"num_frames": -3}, r"num_frames.*-3"),
    ({"num_frames": 2.5}, r"num_frames.*2\.5"),
    ({"fps": 0}, r"fps.*fps=0"),
    ({"fps": -1.5}, r"fps.*-1\.5"),
    ({"fps": float("nan")}, r"fps.*nan"),
    ({"max_frames": 0}, r"max_frames.*max_frames=0"),
    ({"num_frames": 4, "fps": 2.0}, r"at most one of num_frames / fps"),
])
def test_bad_sampling_args(videos, kwargs, match):
    with pytest.raises(VideoInputError, match=match):
        load_video(videos["mp4"], **kwargs)


@pytest.mark.parametrize("source", [
    grey_frames(3, 8),
    [Image.new("RGB", (4, 4))] * 2,
])
def test_fps_without_timing(source):
    with pytest.raises(VideoInputError, match=r"no(ne)? .*timing|timing information.*num_frames"):
        load_video(source, fps=2)


def test_fps_on_folder(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    with pytest.raises(VideoInputError, match="timing information.*num_frames"):
        load_video(tmp_path, fps=1)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(VideoInputError, match=r"no images found in folder .*\.png, \.jpg, \.jpeg, \.bmp, \.webp"):
        load_video(tmp_path)


def test_unreadable_folder(tmp_path, monkeypatch):
    # Runs as root here, where chmod 000 does not block reads: fake it.
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(tmp_path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(video_mod.os, "scandir", scandir)
    with pytest.raises(VideoInputError, match=r"cannot read image folder .*Permission denied.*\.png"):
        load_video(tmp_path)


def test_broken_image_in_folder(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "f1.png")
    (tmp_path / "f2.png").write_bytes(b"not a png")
    with pytest.raises(VideoInputError, match=r"cannot read image .*f2\.png"):
        load_video(tmp_path)


def test_mismatched_image_sizes(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "f1.png")
    Image.new("RGB", (6, 4)).save(tmp_path / "f2.png")
    with pytest.raises(VideoInputError, match=r"same size.*f2\.png is 6x4"):
        load_video(tmp_path)
    with pytest.raises(VideoInputError, match=r"same size.*image 1 is 6x4"):
        load_video([Image.new("RGB", (4, 4)), Image.new("RGB", (6, 4))])


@pytest.mark.parametrize("arr, got", [
    (np.zeros((2, 4, 4, 3), np.float32), r"float array.*float32.*astype\(np\.uint8\)"),
    (np.zeros((2, 4, 4, 4), np.uint8), r"shape \(2, 4, 4, 4\) dtype uint8"),
    (np.zeros((4, 4), np.uint8), r"shape \(4, 4\)"),
    (np.zeros((2, 4, 4, 3), np.int64), r"dtype int64"),
    (np.zeros((0, 4, 4, 3), np.uint8), r"shape \(0, 4, 4, 3\)"),
])
def test_bad_arrays(arr, got):
    with pytest.raises(VideoInputError, match=r"\(T, H, W, 3\).*uint8.*got .*" + got):
        load_video(arr)


def test_bad_lists_and_types():
    with pytest.raises(VideoInputError, match="empty"):
        load_video([])
    with pytest.raises(VideoInputError, match="item 1 is ndarray"):
        load_video([Image.new("RGB", (4, 4)), np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(VideoInputError, match="unsupported video source of type int"):
        load_video(42)


# --------------------------------------------------------------------------
# write_video


def test_write_video_errors(tmp_path):
    with pytest.raises(VideoInputError, match=r"even width and height.*31x32"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 32, 31, 3), np.uint8))
    with pytest.raises(VideoInputError, match=r"\(T, H, W, 3\) uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(VideoInputError, match=r"extension '\.xyz'"):
        write_video(tmp_path / "f.xyz", grey_frames(2, 8))
    with pytest.raises(VideoInputError, match="not available"):
        write_video(tmp_path / "f.mkv", grey_frames(2, 8), codec="no_such_codec")
    with pytest.raises(VideoInputError, match="fps"):
        write_video(tmp_path / "f.mkv", grey_frames(2, 8), fps=0)


def test_write_video_explicit_codec_and_fractional_fps(tmp_path):
    path = write_video(tmp_path / "vp9.mkv", grey_frames(6, 16), fps=30000 / 1001, codec="libvpx-vp9")
    clip = load_video(path)
    assert clip.num_frames == 6
    assert clip.source_fps == pytest.approx(29.97, abs=0.01)
    np.testing.assert_array_equal(frame_ids(clip.frames), np.arange(6))


def test_stream_without_timestamps_falls_back_to_average_rate(tmp_path):
    # A raw H.264 elementary stream has no pts at all; FFmpeg guesses a rate
    # (25 fps) and times become index / rate.
    path = write_video(tmp_path / "raw.h264", grey_frames(), fps=FPS, codec="libx264")
    clip = load_video(path, num_frames=4)
    np.testing.assert_array_equal(frame_ids(clip.frames), [0, 8, 15, 23])
    assert clip.source_fps and clip.source_fps > 0
    np.testing.assert_allclose(clip.timestamps, np.array([0, 8, 15, 23]) / clip.source_fps)


# --------------------------------------------------------------------------
# budgets


def test_pixel_budget_refuses_from_the_metadata_before_decoding(videos, monkeypatch):
    h, w = grey_frames().shape[1:3]
    decoded = []
    monkeypatch.setattr(video_mod, "_decode", lambda *a, **k: decoded.append(1))
    with pytest.raises(video_mod.VideoBudgetError, match="more than the limit"):
        load_video(videos["mp4"], num_frames=4, max_pixels=4 * h * w - 1)
    assert not decoded


def test_pixel_budget_holds_while_decoding_when_the_metadata_lies(videos, monkeypatch):
    real_probe = video_mod._probe
    monkeypatch.setattr(video_mod, "_probe", lambda path, budget: dataclasses.replace(real_probe(path, budget), size=(2, 2)))
    h, w = grey_frames().shape[1:3]
    assert load_video(videos["mp4"], num_frames=4, max_pixels=4 * h * w).num_frames == 4
    with pytest.raises(video_mod.VideoBudgetError, match="decoded"):
        load_video(videos["mp4"], num_frames=4, max_pixels=4 * h * w - 1)


def test_pixel_budget_bounds_a_folder_of_frames_from_the_image_headers(tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(grey_frames(6)):
        Image.fromarray(frame).save(folder / f"frame_{i}.png")
    converted = []
    real = video_mod._pil_to_rgb
    monkeypatch.setattr(video_mod, "_pil_to_rgb", lambda img: converted.append(1) or real(img))
    with pytest.raises(video_mod.VideoBudgetError, match=r"4 frames of 32x32 \(as frame_0.png declares\) are "
                                                         r"4,096 pixels, more than the limit of 4,095"):
        load_video(folder, num_frames=4, max_pixels=4 * SIZE * SIZE - 1)
    assert not converted  # refused before any image was decoded
    assert load_video(folder, num_frames=4, max_pixels=4 * SIZE * SIZE).num_frames == 4


def test_pixel_budget_bounds_every_decoded_frame_not_only_the_kept_ones(tmp_path):
    """A stream declaring 16x16 whose middle frame is an 8192x8192 JPEG (770 KB): sampling keeps the
    two 16x16 ends, but the middle frame was decoded all the same (64 MiB of pixels, up to FFmpeg's
    own limit of 16384x16384 per frame) whatever max_pixels said. Now the decoder refuses it."""
    import io

    def jpeg(size: int) -> bytes:
        out = io.BytesIO()
        Image.new("L", (size, size), 128).save(out, "JPEG")
        return out.getvalue()

    path = tmp_path / "liar.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
        for i, data in enumerate([jpeg(16), jpeg(8192), jpeg(16)]):
            packet = av.Packet(data)
            packet.pts = packet.dts = i
            packet.time_base, packet.stream = Fraction(1, 8), stream
            container.mux(packet)
    def load():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return load_video(path, num_frames=2, max_pixels=2**20), caught

    (clip, caught), growth = rss_growth(load)
    assert growth < 32 / 1024, growth * 1024  # GiB; MiB in the message
    assert clip.frames.shape == (2, 16, 16, 3) and "1 decoding error(s) ignored" in str(caught[-1].message)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
def test_max_pixels_must_be_a_positive_integer(videos, bad):
    with pytest.raises(VideoInputError, match=rf"max_pixels must be an integer >= 1 .*got max_pixels={bad!r}"):
        load_video(videos["mp4"], num_frames=2, max_pixels=bad)


def test_deadline_stops_reading(videos):
    with pytest.raises(video_mod.VideoTimeoutError, match="time limit"):
        load_video(videos["mp4"], deadline=time.monotonic() - 1)


def test_fps_far_above_the_source_rate_takes_every_frame_without_listing_instants(videos):
    clip = load_video(videos["mp4"], fps=1e300)
    assert clip.num_frames == N_FRAMES and list(clip.indices) == list(range(N_FRAMES))
