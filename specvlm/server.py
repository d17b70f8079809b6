"""An OpenAI-compatible HTTP server for video chat, with speculative decoding behind it.

    specvlm serve [--target T --draft D] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
                  [--allowed-media-dir DIR] [--max-media-mb 64] [--allow-remote-media]
                  [--max-video-pixels N] [--max-body-mb MB] [--max-queue 8] [--timeout 600]

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (plain and server-sent events),
``GET /health``, ``GET /metrics`` (Prometheus text format).

A chat request carries at most one video, as a ``video_url`` content part: a
``data:video/...;base64,`` URL, or a local path / ``file://`` URL under ``--allowed-media-dir``
(remote URLs only with ``--allow-remote-media``); without one it is a text-only chat. OpenAI's parameters (``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, ``stream``, ``stream_options``, ``n`` = 1) and this
project's own as extra top-level fields, the way vLLM takes its extras: ``num_frames`` / ``fps``,
``prune`` (a strategy name, or "none"), ``prune_ratio``, ``speculative``. Answers are
``SpeculativeVLM.generate``'s, so a greedy answer is the target's own, byte for byte.

Every resource a request can take is bounded before the work that takes it: the body's bytes
(``--max-body-mb``, from Content-Length and while reading), the video's encoded bytes
(``--max-media-mb``), its decoded pixels (frames x height x width, ``--max-video-pixels``, from the
container's metadata before decoding and again while decoding), its frames (``--max-frames``), the
prompt's characters, and time: media loading and generation both run under the request's
``--timeout``. Only regular files are opened. Requests wait in a queue of at most ``max_queue``
(beyond it, streamed or not: 503 with Retry-After, before any 200); the engine runs one generation
at a time, in a worker thread. A client that disconnects, or a request past its timeout, stops its
generation at the next cycle. Every bad request gets a 4xx with an OpenAI-style error object naming
the field; a failed generation (out of GPU memory included) is answered without internals, and the
server keeps serving. Metric labels come from the route table, never from what a client sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import http.client
import json
import logging
import math
import os
import socket
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # the serve extra: pip install "specvlm[serve]"
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from specvlm.engine.sampling import MIN_SAMPLING, SEED_RANGE
from specvlm.pruning import STRATEGIES
from specvlm.video import SERVED_MAX_VIDEO_PIXELS

log = logging.getLogger("specvlm.server")
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions")  # metric labels: these or "other"
MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 2**16  # counted (over) from the body's commas and brackets before it is parsed
MAX_NUMBER_DIGITS = 64  # a JSON integer's digits at most (parsing one costs quadratic time in its length)
MAX_FPS = 240.0
MAX_STOP_CHARS = 256
MAX_ECHO_CHARS = 500  # an error's message at most (its param: 100): both may quote what the client sent

MEDIA_SUFFIX = {"mp4": ".mp4", "webm": ".webm", "x-matroska": ".mkv", "matroska": ".mkv", "quicktime": ".mov",
                "x-msvideo": ".avi", "avi": ".avi", "mpeg": ".mpg", "ogg": ".ogv"}  # fmt: skip
# OpenAI parameters accepted only at their neutral value
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": None,
           "logit_bias": None, "response_format": None, "tools": None, "tool_choice": None,
           "parallel_tool_calls": None, "service_tier": None, "store": None, "metadata": None,
           "user": "*"}  # fmt: skip


@dataclass
class ServeSettings:
    model_name: str
    max_queue: int = 8
    timeout_s: float = 600.0
    api_key: str | None = None
    allowed_media_dir: Path | None = None
    max_media_mb: float = 64.0
    allow_remote_media: bool = False
    num_frames: int | None = 32  # when a request gives neither num_frames nor fps
    fps: float | None = None  # (or this, when the server was started with --fps)
    max_frames: int | None = 256  # a request's num_frames above it is refused; fps-sampled clips are cut to it
    max_new_tokens: int = 256  # when a request gives no max_tokens
    retry_after_s: int = 5
    max_video_pixels: int = SERVED_MAX_VIDEO_PIXELS  # decoded frames x height x width (64 Mpx: 32 frames of 1080p)
    max_body_mb: float | None = None  # default: what --max-media-mb needs as base64, plus 1 MiB
    max_prompt_chars: int = 1_000_000

    @property
    def body_limit(self) -> int:
        if self.max_body_mb is not None:
            return int(self.max_body_mb * 2**20)
        return int(self.max_media_mb * 2**20 * 4 / 3) + 2**20


class RequestError(Exception):
    """A problem with the request: answered with ``status`` and an OpenAI-style error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):  # fmt: skip
        message, param = message[:MAX_ECHO_CHARS], None if param is None else param[:100]
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """Raised inside a generation to stop it at the next cycle."""


# ------------------------------------------------------------------------------------ the request


@dataclass
class ChatJob:
    messages: list[dict]  # the processor's chat format, at most one {"type": "video"} part
    video_url: str | None  # None: a text-only chat
    max_new_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    num_frames: int | None
    fps: float | None
    prune: Any  # "default" (the server's), None (plain SD) or a PruneConfig
    speculative: bool
    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float = 0.0
    inputs: Any = None  # the processor's output, built once when the context is checked


def _number(body: dict, name: str, kind, *, low=None, high=None, low_open=False, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}"[:200],
                           param=name)  # fmt: skip
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be a finite number, got {value!r}", param=name)
    if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
        rule = f"in {lo}{high if high is not None else 'inf'}" + ("]" if high is not None else ")")
        raise RequestError(400, f"'{name}' must be {rule}, got {value!r}"[:200], param=name)
    return kind(value)


def parse_request(body: Any, settings: ServeSettings) -> ChatJob:
    """Check a chat-completions body and turn it into a job; every problem is a RequestError."""
    from specvlm.pruning import PruneConfig

    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    known = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
             "stream", "stream_options", "n", "num_frames", "fps", "prune", "prune_ratio", "speculative"}
    for name, value in body.items():
        if name in known:
            continue
        if name not in NEUTRAL:
            raise RequestError(400, f"unknown parameter '{name}'", param=name, code="unknown_parameter")
        if NEUTRAL[name] != "*" and value not in (NEUTRAL[name], None):
            raise RequestError(400, f"'{name}' is not supported (only {NEUTRAL[name]!r})", param=name)
    model = body.get("model")
    if model is not None and model != settings.model_name:
        raise RequestError(404, f"model {repr(model)[:80]} is not served here; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip
    n = _number(body, "n", int, default=1)
    if n != 1:
        raise RequestError(400, f"'n' must be 1 (one answer per request), got {n}", param="n")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"  # a null is unset
    max_new = _number({name: body.get(name)}, name, int, low=1, high=2**31, default=settings.max_new_tokens)
    temperature = _number(body, "temperature", float, low=0, high=2, default=0.0)
    if 0 < temperature < MIN_SAMPLING:
        raise RequestError(400, f"'temperature' must be 0 (greedy) or at least {MIN_SAMPLING:g}, got {temperature!r}",
                           param="temperature")  # fmt: skip
    top_p = _number(body, "top_p", float, low=MIN_SAMPLING, high=1)
    if top_p == 1.0:
        top_p = None
    seed = _number(body, "seed", int, low=SEED_RANGE[0], high=SEED_RANGE[1])
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 4:
        stop = tuple(stop)
    else:
        raise RequestError(400, "'stop' must be a string or a list of at most 4 non-empty strings", param="stop")
    if stop and not all(stop):
        raise RequestError(400, "'stop' strings must not be empty", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise RequestError(400, f"'stop' strings must be at most {MAX_STOP_CHARS} characters", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"'stream' must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                           param="stream_options")  # fmt: skip
    num_frames = _number(body, "num_frames", int, low=1, high=settings.max_frames or 4096)
    fps = _number(body, "fps", float, low=0, low_open=True, high=MAX_FPS)
    if num_frames is not None and fps is not None:
        raise RequestError(400, "give 'num_frames' or 'fps', not both", param="fps")
    if num_frames is None and fps is None:
        num_frames, fps = (None, settings.fps) if settings.fps else (settings.num_frames, None)
    speculative = body.get("speculative", True)
    if not isinstance(speculative, bool):
        raise RequestError(400, f"'speculative' must be true or false, got {speculative!r}", param="speculative")
    prune: Any = "default"
    strategy, ratio = body.get("prune"), _number(body, "prune_ratio", float, low=0, high=1)
    if strategy is not None:
        if strategy is False or strategy == "none":
            prune = None
        elif isinstance(strategy, str) and strategy in STRATEGIES:
            prune = PruneConfig(strategy=strategy, ratio=0.9 if ratio is None else ratio)
        else:
            raise RequestError(400, f"'prune' must be one of {', '.join(STRATEGIES)} (or false), got {strategy!r}",
                               param="prune")  # fmt: skip
    elif ratio is not None:
        prune = PruneConfig(ratio=ratio)
    messages, video_url = convert_messages(body.get("messages"), settings.max_prompt_chars)
    return ChatJob(messages=messages, video_url=video_url, max_new_tokens=max_new, temperature=temperature,
                   top_p=top_p, seed=seed, stop=stop, stream=stream, include_usage=options.get("include_usage", False),
                   num_frames=num_frames, fps=fps, prune=prune, speculative=speculative)  # fmt: skip


def convert_messages(messages: Any, max_chars: int = 1_000_000) -> tuple[list[dict], str | None]:
    """OpenAI chat messages -> the processor's chat format with at most one video part, and the
    video's URL (None: a text-only chat)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of chat messages", param="messages")
    out, videos, text = [], [], ""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, f"{where} must be an object with a role of system, user or assistant",
                               param=where)  # fmt: skip
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise RequestError(400, f"{where}.content must be a string or a list of content parts", param=where)
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
                text += part["text"]
            elif kind == "video_url":
                url = (part.get("video_url") or {}).get("url") if isinstance(part.get("video_url"), dict) else None
                if not isinstance(url, str) or not url:
                    raise RequestError(400, f"{where}.content[{j}].video_url.url must be a string", param=where)
                videos.append(url)
                parts.append({"type": "video"})
            elif kind in ("image_url", "input_audio", "file"):
                raise RequestError(400, f"{where}.content[{j}]: {kind} input is not supported; send one video_url",
                                   param=where)  # fmt: skip
            else:
                raise RequestError(400, f"{where}.content[{j}] must be a text or video_url part", param=where)
        out.append({"role": message["role"], "content": parts})
    if len(videos) > 1:
        raise RequestError(400, f"the messages hold {len(videos)} videos; one video per request is supported",
                           param="messages")  # fmt: skip
    if not text.strip():
        raise RequestError(400, "the messages hold no text: ask something" + (" about the video" if videos else ""),
                           param="messages")  # fmt: skip
    if len(text) > max_chars:
        raise RequestError(400, f"the messages hold {len(text):,} characters of text, more than the server's "
                           f"{max_chars:,}", param="messages", code="context_length_exceeded")  # fmt: skip
    return out, (videos[0] if videos else None)


def _refuse_constant(name: str):
    raise RequestError(400, f"the request body is not valid JSON: {name} is not a JSON number")


def _parse_int(literal: str) -> int:
    if (digits := len(literal.lstrip("-"))) > MAX_NUMBER_DIGITS:
        raise RequestError(400, f"the request body holds an integer of {digits:,} digits, more than the "
                           f"server's {MAX_NUMBER_DIGITS}")  # fmt: skip
    return int(literal)


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or a RequestError: strict UTF-8, no NaN / Infinity, at most MAX_JSON_DEPTH
    levels of nesting, at most MAX_JSON_VALUES values, integers of at most MAX_NUMBER_DIGITS digits, no
    lone surrogates in strings. It runs on the event loop: each bound keeps one body's parse short."""
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")  # every value past the first needs one
    if values > MAX_JSON_VALUES:  # a few bytes each, tens of bytes each parsed: refused unparsed
        raise RequestError(400, f"the request body holds too many JSON values ({values:,} commas and brackets, "
                           f"more than the server's {MAX_JSON_VALUES:,})")  # fmt: skip
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
    except UnicodeDecodeError:
        raise RequestError(400, "the request body is not UTF-8") from None
    except RecursionError:
        raise RequestError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        raise RequestError(400, "the request body is not valid JSON") from None
    stack = [(value, 0, "body")]
    while stack:  # iterative: a deep body cannot exhaust the stack here
        item, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1, k) for k, v in item.items())
            stack.extend((k, depth + 1, "a key") for k in item)
        elif isinstance(item, list):
            stack.extend((v, depth + 1, where) for v in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(400, f"'{where}' holds a lone UTF-16 surrogate (not text)"[:200],
                                   param=where if where not in ("body", "a key") else None) from None  # fmt: skip
    return value


# --------------------------------------------------------------------------------------- media


def fetch_video(url: str, settings: ServeSettings, workdir: Path, deadline: float | None = None) -> Path:
    """A local file holding the requested video, or a RequestError naming why not; a remote one is
    read no longer than until ``deadline`` (a ``time.monotonic()`` value)."""
    limit = int(settings.max_media_mb * 2**20)
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64") or not header[5:].startswith("video/"):
            raise RequestError(400, "a data URL must look like data:video/<format>;base64,<data>", param="video_url")
        if len(payload) * 3 // 4 > limit:
            raise _media_too_large(settings)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "the data URL's base64 payload does not decode", param="video_url") from None
        path = workdir / ("video" + MEDIA_SUFFIX.get(header[11:-7], ".mp4"))
        path.write_bytes(data)
        return path
    try:
        parsed = urllib.parse.urlparse(url)
    except ValueError as error:  # "Invalid IPv6 URL", a bad port...
        raise RequestError(400, f"the video URL does not parse ({error})", param="video_url") from None
    scheme = parsed.scheme
    if scheme in ("http", "https"):
        if not settings.allow_remote_media:
            raise RequestError(403, "remote video URLs are not fetched (start the server with --allow-remote-media)",
                               param="video_url", code="remote_media_refused")  # fmt: skip
        path = workdir / ("video" + (Path(parsed.path).suffix or ".mp4"))
        remaining = lambda: math.inf if deadline is None else deadline - time.monotonic()
        try:
            with _urlopen_until(url, max(min(30, remaining()), 0.1), deadline) as response:
                data = b""
                sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
                while len(data) <= limit:
                    if remaining() <= 0:  # a server sending slowly: stop here, not when it is done
                        raise _fetch_timed_out()
                    if sock is not None:  # no one recv may outlast the deadline either
                        sock.settimeout(max(min(30, remaining()), 0.01))
                    if not (piece := response.read1(limit + 1 - len(data))):  # one recv each
                        break
                    data += piece
        except TimeoutError:
            if remaining() <= 0:
                raise _fetch_timed_out() from None
            raise RequestError(400, "cannot fetch the video: the host stopped answering for 30 s", param="video_url") from None
        except (OSError, ValueError, http.client.HTTPException) as error:  # refused, a bad port or reply...
            if remaining() <= 0:  # the deadline's watchdog shut the connection
                raise _fetch_timed_out() from None
            raise RequestError(400, f"cannot fetch the video: {error}"[:300], param="video_url") from None
        if remaining() <= 0:  # (a shut connection reads as the end of the video)
            raise _fetch_timed_out()
        if len(data) > limit:
            raise _media_too_large(settings)
        path.write_bytes(data)
        return path
    if scheme not in ("", "file"):
        raise RequestError(400, f"unsupported video URL scheme {scheme!r}: use a data: URL or a local path",
                           param="video_url")  # fmt: skip
    if scheme == "file" and parsed.netloc not in ("", "localhost"):  # file://host/path names another machine's file
        raise RequestError(400, f"a file: URL names a file on this machine (file:///path), not on {parsed.netloc!r}"[:300],
                           param="video_url")  # fmt: skip
    local = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else url)
    allowed = settings.allowed_media_dir
    refused = RequestError(403, "local video paths are refused unless under the server's --allowed-media-dir",
                           param="video_url", code="media_path_refused")  # fmt: skip
    if allowed is None:
        raise refused
    info = None
    try:
        resolved = local.resolve(strict=True)
        info = resolved.stat()
    except FileNotFoundError:
        resolved = Path(os.path.abspath(local))  # where it would be, for the right error
    except (OSError, RuntimeError, ValueError) as error:  # a null byte, a name too long, a symlink loop
        reason = "a null byte" if isinstance(error, ValueError) else (getattr(error, "strerror", None) or "a loop")
        raise RequestError(400, f"cannot open the video path ({reason})", param="video_url") from None
    try:
        inside = resolved.is_relative_to(allowed.resolve())
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise refused
    shown = str(local)[:200]
    if info is None:
        raise RequestError(400, f"no such video: {shown}", param="video_url")
    if not stat.S_ISREG(info.st_mode):
        raise RequestError(400, f"not a regular file: {shown}", param="video_url")
    if info.st_size > limit:
        raise _media_too_large(settings)
    return resolved


_LOOKUPS = threading.BoundedSemaphore(16)  # name lookups in flight at most, each on a thread of its own


def _look_up(host: str, port: int, deadline: float | None) -> list[str]:
    """The addresses of ``host``, looked up on a thread of its own that the caller waits for
    until ``deadline`` at most: a slow name server held the worker thread (which media, prompts and
    generations all need) for as long as the system's resolver allows. A lookup left running past
    its deadline keeps its place among the 16 until it ends."""
    if not _LOOKUPS.acquire(blocking=False):
        raise OSError("too many name lookups in flight; try again")
    found: dict = {}

    def run() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found["addresses"] = list(dict.fromkeys(info[4][0] for info in infos))
        except OSError as error:
            found["error"] = error
        finally:
            _LOOKUPS.release()

    lookup = threading.Thread(target=run, name="name lookup", daemon=True)
    lookup.start()
    lookup.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
    if lookup.is_alive():
        raise TimeoutError(f"looking up {host!r} ran past the deadline")
    if "error" in found:
        raise found["error"]
    return found["addresses"]


@contextlib.contextmanager
def _urlopen_until(url: str, timeout: float, deadline: float | None):
    """urllib's urlopen, with every socket it opens (redirects' included) shut down at ``deadline``.
    http.client's ``timeout`` bounds each recv, not the whole: a host sending its status line and
    headers a byte at a time held the worker thread past the request's answer, for as long as it
    liked, and a few such requests took every thread of the pool all requests need."""
    socks: list[socket.socket] = []

    def watched(address, *args, **kwargs) -> socket.socket:
        host, port = address
        error = None
        for ip in _look_up(host, port, deadline):  # each address in turn, as socket.create_connection does
            try:
                sock = socket.create_connection((ip, port), *args, **kwargs)
                break
            except OSError as failed:
                error = failed
        else:
            raise error
        socks.append(sock)
        if deadline is not None and time.monotonic() >= deadline:  # opened after the watchdog ran
            sock.close()
            raise TimeoutError("past the deadline")
        return sock

    def connection(cls):
        def make(*args, **kwargs):
            conn = cls(*args, **kwargs)
            conn._create_connection = watched  # how http.client opens its socket (TLS wraps it after)
            return conn

        return make

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(connection(http.client.HTTPConnection), req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(connection(http.client.HTTPSConnection), req, context=self._context)

    def cut() -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(max(deadline - time.monotonic(), 0), cut) if deadline is not None else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        with urllib.request.build_opener(Plain, Secure).open(url, timeout=timeout) as response:
            yield response
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _fetch_timed_out() -> RequestError:
    return RequestError(504, "fetching the video timed out", kind="server_error", code="timeout")


def _media_too_large(settings: ServeSettings) -> RequestError:
    return RequestError(413, f"the video is larger than --max-media-mb {settings.max_media_mb:g}",
                        param="video_url", code="media_too_large")  # fmt: skip


def load_clip(job: ChatJob, settings: ServeSettings):
    """The job's frames, within the server's pixel and frame budgets and the job's deadline."""
    from specvlm.video import (
        VideoBudgetError,
        VideoInputError,
        VideoTimeoutError,
        load_video,
    )

    if job.video_url is None:
        return None
    with tempfile.TemporaryDirectory(prefix="specvlm-media-") as tmp:
        path = fetch_video(job.video_url, settings, Path(tmp), job.deadline)
        try:
            return load_video(path, num_frames=job.num_frames, fps=job.fps, max_frames=settings.max_frames,
                              max_pixels=settings.max_video_pixels, deadline=job.deadline)  # fmt: skip
        except VideoTimeoutError:
            raise RequestError(504, f"reading the video timed out after {settings.timeout_s:g} s",
                               kind="server_error", code="timeout") from None  # fmt: skip
        except VideoBudgetError as error:
            width, height = error.size
            message = (f"{error.frames} frames of {width}x{height} are {error.pixels:,} pixels, more than the "
                       f"server's limit of {error.limit:,} (--max-video-pixels): ask for fewer num_frames or a lower fps")
            raise RequestError(413, message, param="video_url", code="media_too_large") from None
        except VideoInputError as error:
            message = str(error).replace(str(path), "the video")[:300]
            raise RequestError(400, f"unreadable video: {message}", param="video_url", code="invalid_video") from None
        except Exception as error:  # noqa: BLE001 - the decoder tripping on a file in a way video.py did not foresee
            log.warning("a video failed to decode (%s: %s); answered 400", type(error).__name__, str(error)[:200])
            raise RequestError(400, "unreadable video: the decoder failed on it (a corrupt or unsupported file)",
                               param="video_url", code="invalid_video") from None  # fmt: skip


# ------------------------------------------------------------------------------------ the server


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("specvlm_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
        self.errors = Counter("specvlm_errors", "requests answered with an error", ["type"], registry=registry)
        self.tokens = Counter("specvlm_generated_tokens", "tokens generated", registry=registry)
        self.cancelled = Counter("specvlm_cancelled_generations", "generations stopped early", ["reason"],
                                 registry=registry)  # fmt: skip
        self.tau = Histogram("specvlm_tau", "tokens per target verification pass",
                             buckets=(1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 8), registry=registry)  # fmt: skip
        self.latency = Histogram("specvlm_request_latency_seconds", "whole-request latency",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=registry)  # fmt: skip
        self.queue = Gauge("specvlm_queue_depth", "generations waiting for the engine", registry=registry)
        self.running = Gauge("specvlm_running", "generations running", registry=registry)


class Ticket:
    """A place in the engine's queue, taken at admission and given back once, whatever happens."""

    def __init__(self, engine: "Engine"):
        self.engine, self.held = engine, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.engine.pending -= 1
            self.engine.metrics.queue.set(self.engine.pending - int(self.engine.lock.locked()))


class Engine:
    """One generation at a time on the model pair; at most ``max_queue`` admitted requests waiting
    (loading their media or waiting for the engine) beside the one running."""

    def __init__(self, pair, settings: ServeSettings, metrics: Metrics):
        self.pair, self.settings, self.metrics = pair, settings, metrics
        self.lock = asyncio.Lock()
        self.pending = 0  # admitted and not finished: waiting or running
        processor = pair.target.processor  # its media placeholders: in a client's text they break the prompt
        self.placeholders = tuple(t for t in (getattr(processor, "video_token", None),
                                              getattr(processor, "image_token", None)) if isinstance(t, str) and t)  # fmt: skip

    @property
    def waiting(self) -> int:
        return self.pending - int(self.lock.locked())

    def admit(self) -> Ticket:
        """A place in the queue, or 503 with Retry-After when it is full (before any work or 200)."""
        if self.pending >= self.settings.max_queue + 1:
            raise RequestError(503, f"the server is busy ({self.waiting} requests waiting); retry later",
                               kind="server_error", code="queue_full",
                               headers={"Retry-After": str(self.settings.retry_after_s)})  # fmt: skip
        self.pending += 1
        self.metrics.queue.set(self.waiting)
        return Ticket(self)

    async def run(self, job: ChatJob, ticket: Ticket, fn):
        """Run ``fn()`` in a worker thread when the engine is free, within the job's deadline."""
        try:
            remaining = job.deadline - time.monotonic()
            try:
                await asyncio.wait_for(self.lock.acquire(), timeout=max(remaining, 0.001))
            except (asyncio.TimeoutError, TimeoutError):
                raise RequestError(504, f"timed out after {self.settings.timeout_s:g} s waiting for the engine",
                                   kind="server_error", code="timeout") from None  # fmt: skip
            self.metrics.running.set(1)
            self.metrics.queue.set(self.waiting)
            try:
                return await asyncio.to_thread(fn)
            finally:
                self.metrics.running.set(0)
                self.lock.release()
        finally:
            ticket.release()

    def generate(self, job: ChatJob, clip, on_text=None):
        """The answer (GenerateOutput) of one job; runs in the worker thread."""
        import torch

        from specvlm.api import TextDeltas

        deltas = TextDeltas(self.pair.target.tokenizer)

        def check() -> None:
            if job.cancel.is_set():
                raise Cancelled("client went away")
            if time.monotonic() > job.deadline:
                raise Cancelled("timeout")

        def on_tokens(new: list[int]) -> None:
            check()
            if on_text is not None and (piece := deltas.add(new)):
                on_text(piece)

        try:
            check()  # a client gone while queued costs no prefill
            out = self.pair.generate(
                clip, job.messages, max_new_tokens=job.max_new_tokens, temperature=job.temperature,
                top_p=job.top_p, seed=job.seed, stop_strings=job.stop, speculative=job.speculative,
                on_tokens=on_tokens, prune=job.prune, inputs=job.inputs,
            )  # fmt: skip
        except Cancelled as why:
            self.metrics.cancelled.labels(reason=str(why)).inc()
            if str(why) == "timeout":
                raise RequestError(504, f"generation timed out after {self.settings.timeout_s:g} s",
                                   kind="server_error", code="timeout") from None  # fmt: skip
            raise
        except torch.OutOfMemoryError as error:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            first = (str(error).strip().splitlines() or [""])[0][:160]
            raise RequestError(503, f"out of GPU memory ({first}): ask for fewer num_frames or max_tokens",
                               kind="server_error", code="out_of_memory") from None  # fmt: skip
        if on_text is not None and (piece := deltas.rest(out.text)):
            on_text(piece)
        return out

    def check_text(self, job: ChatJob) -> None:
        """Refuse text that holds the processor's video or image placeholder (only the server places them)."""
        for i, message in enumerate(job.messages):
            for part in message["content"]:
                for token in self.placeholders:
                    if part["type"] == "text" and token in part["text"]:
                        raise RequestError(400, f"messages[{i}] holds {token!r}, the model's own placeholder for "
                                           "media: send the video as a video_url part", param=f"messages[{i}]")  # fmt: skip

    def check_context(self, job: ChatJob, clip) -> None:
        from specvlm.models import PromptTooLongError

        job.inputs = self.pair.inputs(clip, job.messages)  # kept for the generation: the processor runs once
        try:
            self.pair.check_context(job.inputs["input_ids"], job.max_new_tokens, speculative=job.speculative)
        except PromptTooLongError as error:
            message = str(error).replace("num_frames=...", "num_frames").replace("fps=...", "fps")
            message = message.replace("max_new_tokens=...", "max_tokens")
            raise RequestError(400, message, param="messages", code="context_length_exceeded") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 from its Content-Length or as soon as more than ``limit`` bytes
    have arrived (nothing past that is read)."""
    too_large = f"the request body is larger than the server's limit of {limit / 2**20:.1f} MiB (--max-body-mb)"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, "the Content-Length header is not a number")
        if int(declared) > limit:
            raise RequestError(413, too_large, code="body_too_large")
    chunks, size = [], 0
    try:
        async for piece in request.stream():
            size += len(piece)
            if size > limit:
                raise RequestError(413, too_large, code="body_too_large")
            chunks.append(piece)
    except ClientDisconnect:  # gone mid-body: an answer nobody reads, not an error of ours to log
        raise RequestError(400, "the client closed the connection before sending the whole body",
                           code="client_closed") from None  # fmt: skip
    return b"".join(chunks)


class StopText:
    """OpenAI's ``stop``: the text up to the first stop string, which is left out. Streamed pieces
    pass through ``add``, which holds back a tail that could still begin a stop string."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held, self.done = stops, "", False

    def cut(self, text: str) -> str:
        ends = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return text[: min(ends)] if ends else text

    def add(self, piece: str) -> str:
        if self.done:
            return ""
        text = self.held + piece
        cut = self.cut(text)
        if len(cut) < len(text):  # a stop string is complete: show what precedes it, then nothing
            self.done, self.held = True, ""
            return cut
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        rest, self.held = ("" if self.done else self.held), ""
        return rest


def _authorized(header: str, key: str) -> bool:
    """``Authorization: Bearer <key>``, the scheme case-insensitive (RFC 7235)."""
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class SlowReader(Exception):
    """A client that took in nothing of its answer for the request timeout."""


class Guard:
    """Pure ASGI middleware: the API key (every path but /health), a 500 without internals for
    anything that escapes a handler, and a bound on each write of an answer: a client that reads
    nothing of it for ``timeout_s`` is dropped (its connection closed), instead of holding its place
    under the connection limit for as long as it likes. Bodies and disconnects pass through."""

    def __init__(self, app, settings: ServeSettings, respond):
        self.app, self.settings, self.respond = app, settings, respond

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ROUTES else "other"
        if self.settings.api_key and path != "/health":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not _authorized(header, self.settings.api_key):
                error = RequestError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                     code="invalid_api_key")  # fmt: skip
                return await self.respond(error, endpoint)(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            try:  # a write waits only while the client's socket is full: it has stopped reading
                await asyncio.wait_for(send(message), timeout=self.settings.timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                raise SlowReader from None

        try:
            await self.app(scope, receive, tracked)
        except SlowReader:  # returning with the answer unfinished makes uvicorn close the connection
            log.warning("dropped a client that read nothing for %g s on %s", self.settings.timeout_s, endpoint)
        except Exception:  # never a traceback to the client
            log.exception("unhandled error on %s", endpoint)
            if not started:
                error = RequestError(500, "internal server error (see the server's log)", kind="server_error")
                await self.respond(error, endpoint)(scope, receive, send)


def finish_reason(out, job: ChatJob, eos: tuple[int, ...]) -> str:
    if out.token_ids and out.token_ids[-1] in eos:
        return "stop"
    if job.stop and any(s in out.text for s in job.stop):
        return "stop"
    return "length" if len(out.token_ids) >= job.max_new_tokens else "stop"


def usage(out) -> dict:
    n = len(out.token_ids)
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": n, "total_tokens": out.prompt_tokens + n}


def specvlm_stats(out, job: ChatJob) -> dict:
    stats = out.stats
    tau = getattr(stats, "tau", None)
    return {
        "speculative": job.speculative,
        "tau": tau if tau == tau else None,  # NaN: no verification pass ran
        "tokens_per_s": stats.tokens_per_s if stats.tokens_per_s == stats.tokens_per_s else None,
        "video_tokens": getattr(stats, "video_tokens", None),
        "draft_video_tokens": getattr(stats, "draft_video_tokens", None),
        "prefill_s": stats.prefill_s,
        "decode_s": stats.decode_s,
    }


def create_app(pair, settings: ServeSettings):
    """The FastAPI application serving ``pair`` (a SpeculativeVLM)."""
    metrics = Metrics()
    engine = Engine(pair, settings, metrics)
    app = FastAPI(title="specvlm", version="0.1.0")
    app.state.engine, app.state.metrics, app.state.settings = engine, metrics, settings
    created = int(time.time())
    eos = tuple(pair.target.eos_token_ids)

    def error_response(error: RequestError, endpoint: str) -> JSONResponse:
        metrics.errors.labels(type=error.code or error.kind).inc()
        metrics.requests.labels(endpoint=endpoint, status=str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    app.add_middleware(Guard, settings=settings, respond=error_response)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, error: HTTPException):  # an unknown path or method: the same error shape
        path = request.url.path
        error = RequestError(error.status_code, f"{request.method} {path}: {error.detail}",
                             code="unknown_url" if error.status_code == 404 else None,
                             headers=dict(error.headers or {}))  # fmt: skip
        return error_response(error, path if path in ROUTES else "other")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "waiting": engine.waiting,
                "busy": engine.lock.locked()}  # fmt: skip

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        metrics.requests.labels(endpoint="/v1/models", status="200").inc()
        return {"object": "list",
                "data": [{"id": settings.model_name, "object": "model", "created": created, "owned_by": "specvlm"}]}

    async def within(deadline: float, what: str, work):
        try:
            return await asyncio.wait_for(work, timeout=max(deadline - time.monotonic(), 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestError(504, f"{what} timed out after {settings.timeout_s:g} s", kind="server_error",
                               code="timeout") from None  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        endpoint = "/v1/chat/completions"
        started = time.monotonic()
        ticket = None
        try:
            deadline = started + settings.timeout_s  # a body sent slowly counts against it too
            body = parse_json(await within(deadline, "reading the request body", read_body(request, settings.body_limit)))
            job = parse_request(body, settings)
            engine.check_text(job)
            job.deadline = deadline
            ticket = engine.admit()  # refused before decoding media, streamed or not
            clip = await within(job.deadline, "reading the video", asyncio.to_thread(load_clip, job, settings))
            await within(job.deadline, "preparing the prompt", asyncio.to_thread(engine.check_context, job, clip))
        except BaseException as error:  # whatever failed, the place in the queue is given back
            if ticket is not None:
                ticket.release()
            if not isinstance(error, RequestError):
                raise
            return error_response(error, endpoint)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        stops = StopText(job.stop)
        if job.stream:
            # the generation starts here, not in the response's body: a client gone before the body
            # is sent still frees its place in the queue when the (bounded) generation ends
            loop, pieces = asyncio.get_running_loop(), asyncio.Queue()

            def on_text(piece: str) -> None:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

            work = asyncio.ensure_future(engine.run(job, ticket, lambda: engine.generate(job, clip, on_text)))
            work.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved: no warning
            return StreamingResponse(stream(job, work, pieces, stops, rid, now, started),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip
        work = asyncio.ensure_future(engine.run(job, ticket, lambda: engine.generate(job, clip)))
        try:
            while not work.done():  # a client that goes away cancels the generation at the next cycle
                await asyncio.wait({work}, timeout=0.1)
                if not work.done() and await request.is_disconnected():
                    job.cancel.set()
            out = work.result()
        except RequestError as error:
            return error_response(error, endpoint)
        except Cancelled:
            return error_response(RequestError(499, "client closed the request", code="cancelled"), endpoint)
        except Exception:  # a failed generation: answered without internals, the server goes on
            log.exception("generation failed")
            return error_response(RequestError(500, "generation failed (an internal error; see the server's log)",
                                               kind="server_error"), endpoint)  # fmt: skip
        record(out, started)
        metrics.requests.labels(endpoint=endpoint, status="200").inc()
        return {
            "id": rid, "object": "chat.completion", "created": now, "model": settings.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": stops.cut(out.text)},
                         "finish_reason": finish_reason(out, job, eos), "logprobs": None}],
            "usage": usage(out), "specvlm": specvlm_stats(out, job),
        }  # fmt: skip

    def record(out, started: float) -> None:
        metrics.tokens.inc(len(out.token_ids))
        tau = getattr(out.stats, "tau", None)
        if tau is not None and tau == tau:
            metrics.tau.observe(tau)
        metrics.latency.observe(time.monotonic() - started)

    async def stream(job: ChatJob, work: asyncio.Future, pieces: asyncio.Queue, stops: "StopText", rid: str, now: int,
                     started: float) -> AsyncIterator[str]:  # fmt: skip
        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": settings.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        getter = None
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    if shown := stops.add(getter.result()):
                        yield chunk({"content": shown})
                    continue
                getter.cancel()
                while not pieces.empty():
                    if shown := stops.add(pieces.get_nowait()):
                        yield chunk({"content": shown})
                break
            try:
                out = work.result()
            except RequestError as error:
                metrics.errors.labels(type=error.code or error.kind).inc()
                yield f"data: {json.dumps(error.body())}\n\n"
                return
            except Exception:
                log.exception("generation failed")
                metrics.errors.labels(type="server_error").inc()
                body = RequestError(500, "generation failed (an internal error; see the server's log)",
                                    kind="server_error")  # fmt: skip
                yield f"data: {json.dumps(body.body())}\n\n"
                return
            if rest := stops.flush():
                yield chunk({"content": rest})
            record(out, started)
            yield chunk({}, finish_reason(out, job, eos), specvlm=specvlm_stats(out, job))
            if job.include_usage:
                data = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": settings.model_name,
                        "choices": [], "usage": usage(out)}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
            metrics.requests.labels(endpoint="/v1/chat/completions", status="200").inc()
        finally:
            if getter is not None:  # a client gone mid-wait: never leave the wait pending ("Task was destroyed")
                getter.cancel()
            if not work.done():  # the client went away: stop at the next cycle
                job.cancel.set()
                try:
                    await work
                except (Exception, asyncio.CancelledError):  # noqa: S110 - nobody is left to read the outcome
                    pass

    return app


def serve(pair, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``pair`` until interrupted. Connections are bounded too: beyond what the queue can take
    (plus room for /health and /metrics) uvicorn answers 503, and an idle kept-alive connection is
    closed after 5 s."""
    import uvicorn

    uvicorn.Server(uvicorn_config(create_app(pair, settings), settings, host, port, log_level)).run()


def uvicorn_config(app, settings: ServeSettings, host: str, port: int, log_level: str = "info"):
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        """uvicorn's HTTP/1.1 with a deadline on the request head: a connection that has not sent a
        whole one within ``timeout_keep_alive`` of opening (or of its last answer) is closed. uvicorn's
        own timer starts only after a first answer and any byte stops it, so connections that sent
        nothing, or a head a byte at a time, held places under ``limit_concurrency`` for good.

        At the limit, a new connection closes the one that has waited longest for a head (a client
        reopening idle connections as fast as they are closed would otherwise keep every place and
        turn each real request away with 503s); connections with a request in flight are never shed."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            if self.limit_concurrency is None:
                return
            open_ = [c for c in self.connections if getattr(c, "transport", None) is None or not c.transport.is_closing()]
            excess = len(open_) - (self.limit_concurrency - 1)
            if excess > 0:  # (only connections of this protocol can be shed: an upgraded one is never)
                waiting = [c for c in open_ if c is not self and isinstance(c, HeadDeadline) and c.timeout_keep_alive_task is not None
                           and c.conn.our_state is h11.IDLE and c.conn.their_state is h11.IDLE and not _unread(c)]  # fmt: skip
                for victim in sorted(waiting, key=lambda c: c.timeout_keep_alive_task.when())[:excess]:
                    victim.timeout_keep_alive_handler()
                    self.connections.discard(victim)  # its place is free now, not when the loop gets to its close

        def data_received(self, data: bytes) -> None:  # the timer stops at a whole head, not at any byte
            self.conn.receive_data(data)
            self.handle_events()
            if self.conn.their_state is not h11.IDLE:  # a whole head came: the request's own deadline takes over
                self._unset_keepalive_if_required()

    def _unread(protocol) -> int:  # bytes the kernel holds for this connection that nobody read yet (a head in flight)
        try:
            import fcntl
            import termios

            fd = protocol.transport.get_extra_info("socket").fileno()
            return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), sys.byteorder)
        except (ImportError, OSError, AttributeError):  # no FIONREAD here: count it as busy, never shed it
            return 1

    limit = 2 * (settings.max_queue + 1) + 16  # requests in flight at once, /health and /metrics included
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, limit_concurrency=limit, timeout_keep_alive=5,
                          http=HeadDeadline)  # fmt: skip


def api_key_from_env(value: str | None) -> str | None:
    return value or os.environ.get("SPECVLM_API_KEY") or None
