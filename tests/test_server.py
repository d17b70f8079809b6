"""`specvlm serve`: the real server on a loopback port with the bundled pair, talked to with the
official ``openai`` client (and plain HTTP for what a client library hides)."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import re
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import uvicorn

from specvlm import SpeculativeVLM
from specvlm.assets import default_pair, sample_videos
from specvlm.server import ServeSettings, create_app, uvicorn_config
from specvlm.testing.memory import rss_growth

PROMPT = "Describe the video."
FRAMES = 16


class LiveServer:
    """A uvicorn server in a thread on a free loopback port."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn_config(app, app.state.settings, "127.0.0.1", 0, "warning"))  # as serve()
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kw)

    def post(self, body, *, key: str | None = None, raw: bytes | None = None) -> tuple[int, dict, dict]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + "/v1/chat/completions", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), {k.lower(): v for k, v in error.headers.items()}

    def get(self, path: str, key: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def pair():
    target, draft = default_pair()
    return SpeculativeVLM.from_pretrained(str(target), str(draft), dtype="float32")


@pytest.fixture(scope="module")
def clip_path():
    return sample_videos()[0].path


@pytest.fixture(scope="module")
def settings(clip_path):
    return ServeSettings(model_name="bundled", allowed_media_dir=clip_path.parent, num_frames=FRAMES, max_media_mb=0.5)


@pytest.fixture(scope="module")
def server(pair, settings):
    live = LiveServer(create_app(pair, settings))
    yield live
    live.close()


@pytest.fixture(scope="module")
def reference(pair, clip_path) -> str:
    """The API's own greedy answer."""
    return pair.generate(str(clip_path), PROMPT, num_frames=FRAMES, max_new_tokens=256).text


def data_url(path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def messages(url: str, text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}]}]


def test_models_health_and_metrics(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["bundled"]
    status, body = server.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, text = server.get("/metrics")
    assert status == 200 and "specvlm_queue_depth" in text and "specvlm_tau_bucket" in text


@pytest.mark.parametrize("how", ["data-url", "path", "file-url"])
def test_plain_completion_is_the_apis_greedy_answer(server, clip_path, reference, how):
    url = {"data-url": data_url(clip_path), "path": str(clip_path), "file-url": clip_path.as_uri()}[how]
    out = server.client().chat.completions.create(model="bundled", messages=messages(url), max_tokens=256)
    assert out.choices[0].message.content == reference
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 256  # the video's tokens count
    extra = out.model_extra["specvlm"]
    assert extra["speculative"] and extra["tau"] > 1 and extra["draft_video_tokens"] < extra["video_tokens"]


def test_the_processor_runs_once_per_request(server, pair, clip_path, reference, monkeypatch):
    """The prompt is built once, to check its length before the request queues, and that same
    build is decoded (the processor's pixel work is a real share of a short request)."""
    calls = []
    build = pair.target.build_inputs
    monkeypatch.setattr(pair.target, "build_inputs", lambda *a, **k: calls.append(1) or build(*a, **k))
    out = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)), max_tokens=256)
    assert out.choices[0].message.content == reference and len(calls) == 1


def test_streamed_completion_joins_to_the_same_answer(server, clip_path, reference):
    stream = server.client().chat.completions.create(
        model="bundled", messages=messages(data_url(clip_path)), stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert len([p for p in pieces if p]) > 1  # it really streamed
    assert "".join(pieces) == reference and finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_four_concurrent_clients_are_all_answered(server, clip_path, reference, pair):
    other = sample_videos()[1].path
    expected_other = pair.generate(str(other), PROMPT, num_frames=FRAMES).text
    jobs = [(clip_path, reference), (other, expected_other)] * 2

    def ask(job):
        path, _ = job
        out = server.client().chat.completions.create(model="bundled", messages=messages(str(path)))
        return out.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [expected for _, expected in jobs]


def test_beyond_the_queue_requests_get_503_with_retry_after(pair, settings, clip_path, reference):
    live = LiveServer(create_app(pair, ServeSettings(**{**vars(settings), "max_queue": 1})))
    try:
        body = {"model": "bundled", "messages": messages(str(clip_path)), "max_tokens": 256}
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: live.post(body), range(6)))
        busy = [r for r in results if r[0] == 503]
        done = [r for r in results if r[0] == 200]
        assert busy and done and len(busy) + len(done) == 6  # one runs, one waits, the rest are refused
        assert all(r[2].get("retry-after") and r[1]["error"]["code"] == "queue_full" for r in busy)
        assert all(r[1]["choices"][0]["message"]["content"] == reference for r in done)
    finally:
        live.close()


def _cancelled(live) -> float:
    found = re.search(r'specvlm_cancelled_generations_total\{reason="client went away"\} (\S+)', live.get("/metrics")[1])
    return float(found.group(1)) if found else 0.0


def _stops_when_left(live, leave, attempts: int = 3) -> bool:
    """Whether a generation whose client leaves (``leave()``) is stopped and counted. An answer takes
    ~0.4 s here, so on a loaded machine it can be complete before the server sees the client go: a
    few attempts, any of which must show the stop (a server that never stops shows none)."""
    for _ in range(attempts):
        before = _cancelled(live)
        leave()
        for _ in range(200):
            if _cancelled(live) > before:
                return _cancelled(live) == before + 1
            time.sleep(0.05)
    return False


@pytest.mark.parametrize("speculative", [True, False], ids=["speculative", "target-only"])
def test_a_cancelled_stream_stops_its_generation(server, clip_path, reference, speculative):
    def leave():
        stream = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)),
                                                         stream=True, extra_body={"speculative": speculative})  # fmt: skip
        next(iter(stream))  # the first chunk, then the client goes away
        stream.close()

    assert _stops_when_left(server, leave)
    out = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)))
    assert out.choices[0].message.content == reference  # and the server goes on


def test_target_only_streams_token_by_token(server, clip_path, reference):
    stream = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)), stream=True,
                                                     extra_body={"speculative": False})  # fmt: skip
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 10 and "".join(pieces) == reference


def test_the_api_key_is_required_everywhere_but_health(pair, settings, clip_path):
    live = LiveServer(create_app(pair, ServeSettings(**{**vars(settings), "api_key": "s3cret"})))
    try:
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").chat.completions.create(model="bundled", messages=messages(str(clip_path)))
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").models.list()
        assert live.get("/metrics")[0] == 401
        assert live.get("/health")[0] == 200
        out = live.client("s3cret").chat.completions.create(model="bundled", messages=messages(str(clip_path)), max_tokens=4)
        assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"
    finally:
        live.close()


def _body(clip_path, **changes):
    body = {"model": "bundled", "messages": messages(str(clip_path)), "max_tokens": 8}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


BAD = [
    # (what, body changes, status, words in the message)
    ("two videos", "two", 400, "2 videos"),
    ("unreadable video", {"messages": messages("data:video/mp4;base64," + base64.b64encode(b"not a video").decode())},
     400, "unreadable video"),
    ("bad base64", {"messages": messages("data:video/mp4;base64,@@@")}, 400, "base64"),
    ("no text", {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]},
     400, "no text"),
    ("an image", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "image_url input is not supported"),
    ("negative temperature", {"temperature": -1}, 400, "'temperature' must be in [0, 2]"),
    ("top_p past 1", {"top_p": 1.5}, 400, "'top_p'"),
    ("top_p 0", {"top_p": 0}, 400, "'top_p'"),
    ("n of 2", {"n": 2}, 400, "'n' must be 1"),
    ("unknown strategy", {"prune": "bogus"}, 400, "'prune' must be one of"),
    ("prune ratio past 1", {"prune_ratio": 1.5}, 400, "'prune_ratio'"),
    ("no frames", {"num_frames": 0}, 400, "'num_frames'"),
    ("frames and fps", {"num_frames": 4, "fps": 1.0}, 400, "not both"),
    ("string max_tokens", {"max_tokens": "ten"}, 400, "'max_tokens' must be an integer"),
    ("an unknown parameter", {"best_of": 3}, 400, "unknown parameter 'best_of'"),
    ("an unsupported one", {"logprobs": True}, 400, "'logprobs' is not supported"),
    ("another model", {"model": "gpt-4o"}, 404, "not served here"),
    ("a huge model name", {"model": "m" * 100_000}, 404, "'" + "m" * 79 + " is not served here"),  # echoed cut short
    ("past the context", {"max_tokens": 10**7}, 400, "past the target's context"),
    ("a path outside the media folder", {"messages": messages("/etc/hostname")}, 403, "--allowed-media-dir"),
    ("a remote URL", {"messages": messages("https://example.com/v.mp4")}, 403, "--allow-remote-media"),
    ("a missing file", "missing", 400, "no such video"),
    ("too large", "large", 413, "--max-media-mb"),
]


@pytest.mark.parametrize("what, changes, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_naming_the_problem(server, clip_path, what, changes, status, words):
    if changes == "two":
        two = messages(str(clip_path))
        two[0]["content"].insert(0, {"type": "video_url", "video_url": {"url": str(clip_path)}})
        changes = {"messages": two}
    elif changes == "missing":
        changes = {"messages": messages(str(clip_path.parent / "nope.mp4"))}
    elif changes == "large":
        changes = {"messages": messages("data:video/mp4;base64," + "A" * 2**20)}
    code, body, _ = server.post(_body(clip_path, **changes))
    assert code == status, body
    assert set(body["error"]) >= {"message", "type", "param", "code"} and words in body["error"]["message"]


ECHOED = [
    # (what, body changes): each error quotes a value of the request, 500 KB here
    ("an unknown parameter's name", {"x" * 500_000: 1}),
    ("a stream flag", {"stream": "x" * 500_000}),
    ("a speculative flag", {"speculative": "x" * 500_000}),
    ("a prune strategy", {"prune": "x" * 500_000}),
    ("a video URL's scheme", {"messages": messages("x" * 500_000 + ":v.mp4")}),
    ("a video URL's host", {"messages": messages("http://" + "\uff21" * 150_000 + "\u2100/v.mp4")}),
]


@pytest.mark.parametrize("what, changes", ECHOED, ids=[e[0] for e in ECHOED])
def test_an_error_quotes_the_request_cut_short(server, clip_path, what, changes):
    """Errors quoting what was sent quoted all of it (a 500 KB parameter name came back twice, in the
    message and as the param): a client could have the server echo back twice its body."""
    code, body, _ = server.post(_body(clip_path, **changes))
    assert code == 400 and len(json.dumps(body, ensure_ascii=False)) < 1000, (code, len(json.dumps(body)))
    assert body["error"]["message"]


def test_a_null_max_completion_tokens_leaves_max_tokens_in_force(server, clip_path):
    code, body, _ = server.post(_body(clip_path, max_tokens=3) | {"max_completion_tokens": None})
    assert code == 200 and body["usage"]["completion_tokens"] == 3


def test_the_server_keeps_serving_after_bad_requests(server, clip_path):
    assert server.post(None, raw=b"{not json")[0] == 400
    assert server.post([1, 2])[0] == 400
    code, body, _ = server.post(_body(clip_path, max_tokens=3))
    assert code == 200 and body["usage"]["completion_tokens"] == 3


def test_extras_switch_speculation_and_pruning(server, clip_path, reference):
    target_only = server.post(_body(clip_path, max_tokens=256, speculative=False))[1]
    plain = server.post(_body(clip_path, max_tokens=256, prune=False))[1]
    assert target_only["choices"][0]["message"]["content"] == reference == plain["choices"][0]["message"]["content"]
    assert target_only["specvlm"]["speculative"] is False
    assert plain["specvlm"]["draft_video_tokens"] == plain["specvlm"]["video_tokens"]


def test_a_request_past_its_timeout_is_stopped_and_answered_504(pair, settings, clip_path):
    live = LiveServer(create_app(pair, ServeSettings(**{**vars(settings), "timeout_s": 0.01})))
    try:
        code, body, _ = live.post(_body(clip_path, max_tokens=64))
        assert code == 504 and body["error"]["code"] == "timeout"
        assert 'specvlm_errors_total{type="timeout"}' in live.get("/metrics")[1]
    finally:
        live.close()


# ------------------------------------------------------------------------ hostile and careless input


def _raw(port: int, head: bytes, body_chunks=(), timeout: float = 20) -> bytes:
    """Send a hand-made HTTP request (stopping quietly when the server hangs up), return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for piece in body_chunks:
                sock.sendall(piece)
        except OSError:
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply and b'"error"' in reply:
                    break
        except OSError:
            pass
        return reply


@pytest.fixture(scope="module")
def media(tmp_path_factory, clip_path):
    """A media folder with a clip, a FIFO, a folder, a symlink loop and a decompression bomb."""
    from specvlm.video import write_video

    root = tmp_path_factory.mktemp("media")
    (root / "clip.mp4").write_bytes(clip_path.read_bytes())
    os.mkfifo(root / "fifo.mp4")
    (root / "folder.mp4").mkdir()
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    # a few KiB that decode to 16 frames of 2560x2048 (84 Mpx, past the default budget) and of
    # 2048x2048 (exactly the default budget: the largest clip a request may bring)
    write_video(root / "bomb.mp4", np.full((16, 2048, 2560, 3), 90, dtype=np.uint8), fps=8)
    write_video(root / "edge.mp4", np.full((16, 2048, 2048, 3), 90, dtype=np.uint8), fps=8)
    return root


@pytest.fixture(scope="module")
def hostile(pair, media):
    settings = ServeSettings(model_name="bundled", allowed_media_dir=media, num_frames=FRAMES, max_media_mb=0.5,
                             max_queue=1, timeout_s=60)  # fmt: skip
    live = LiveServer(create_app(pair, settings))
    yield live
    live.close()


def _answer(live, media) -> tuple[int, dict, dict]:
    return live.post({"model": "bundled", "messages": messages(str(media / "clip.mp4")), "max_tokens": 24})


HOSTILE = [
    # (what, body or raw JSON text, status, words)
    ("NaN temperature", '{"temperature": NaN}', 400, "NaN is not a JSON number"),
    ("infinite top_p", '{"top_p": Infinity}', 400, "Infinity is not a JSON number"),
    ("1e400 overflows to inf", '{"temperature": 1e400}', 400, "'temperature' must be a finite number"),
    ("fps of 1e300", {"fps": 1e300}, 400, "'fps' must be in"),
    ("huge num_frames", {"num_frames": 10**12}, 400, "'num_frames' must be in"),
    ("seed past 64 bits", {"seed": 2**70}, 400, "'seed' must be in"),
    ("huge max_tokens", {"max_tokens": 10**40}, 400, "'max_tokens' must be in"),
    ("deeply nested JSON", "[" * 60_000 + "]" * 60_000, 400, "nests deeper"),
    ("an integer of 4000 digits", '{"seed": ' + "9" * 4000 + "}", 400, "an integer of 4,000 digits"),
    ("100k tiny values", '{"metadata": [' + "0," * 100_000 + "0]}", 400, "too many JSON values"),
    ("nested beyond the limit", '{"metadata": ' + "[" * 40 + "]" * 40 + "}", 400, "nests deeper"),
    ("lone surrogate", '{"messages": [{"role": "user", "content": "\\ud800 hi"}]}', 400, "lone UTF-16 surrogate"),
    ("not UTF-8", b'{"model": "\xff"}', 400, "not UTF-8"),
    ("a null byte in the path", "nul", 400, "null byte"),
    ("an over-long name", "long", 400, "cannot open the video path"),
    ("a symlink loop", "loop", 400, "cannot open the video path"),
    ("a FIFO", "fifo", 400, "not a regular file"),
    ("a folder", "folder", 400, "not a regular file"),
    ("a decompression bomb", "bomb", 413, "--max-video-pixels"),
    ("an over-long stop string", {"stop": ["x" * 10_000]}, 400, "'stop' strings must be at most"),
    ("a temperature below float32", {"temperature": 1e-39}, 400, "'temperature' must be 0 (greedy) or at least"),
    ("a top_p below float32", {"temperature": 1, "top_p": 1e-46}, 400, "'top_p' must be in"),
    ("the video placeholder in the text", {"messages": [{"role": "user", "content": "What is <video>?"}]},
     400, "the model's own placeholder"),
    ("the image placeholder in the text", {"messages": [{"role": "user", "content": "What is <image>?"}]},
     400, "the model's own placeholder"),
    ("a URL that does not parse", "ipv6", 400, "the video URL does not parse"),
    ("a file: URL on another host", "otherhost", 400, "not on 'otherhost'"),
]


@pytest.mark.parametrize("what, body, status, words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_values_get_a_4xx_quickly_and_bounded(hostile, media, what, body, status, words):
    names = {"nul": str(media / "clip\x00.mp4"), "long": str(media / ("x" * 5000 + ".mp4")), "loop": str(media / "loop-a"),
             "fifo": str(media / "fifo.mp4"), "folder": str(media / "folder.mp4"),
             "bomb": data_url(media / "bomb.mp4"), "ipv6": "file://[x/clip.mp4",
             "otherhost": "file://otherhost" + str(media / "clip.mp4")}  # fmt: skip
    if isinstance(body, str) and body in names:
        raw = json.dumps({"model": "bundled", "messages": messages(names[body]), "max_tokens": 8}).encode()
    elif isinstance(body, dict):
        raw = json.dumps({"model": "bundled", "messages": messages(str(media / "clip.mp4")), "max_tokens": 8, **body}).encode()
    else:
        raw = body if isinstance(body, bytes) else body.encode()
    t0 = time.monotonic()
    (code, reply, _), grown = rss_growth(lambda: hostile.post(None, raw=raw))
    assert code == status and words in reply["error"]["message"], reply
    assert set(reply["error"]) >= {"message", "type", "param", "code"}
    assert time.monotonic() - t0 < 20 and grown < 1.0


def test_file_urls_on_this_machine_are_read(hostile, media):
    for url in ("file://" + str(media / "clip.mp4"), "file://localhost" + str(media / "clip.mp4")):
        code, reply, _ = hostile.post({"model": "bundled", "messages": messages(url), "max_tokens": 4})
        assert code == 200, reply


def test_requests_failing_while_prepared_give_back_their_queue_place(hostile, media):
    """The queue holds two here; requests that failed after admission used to keep their place."""
    for text, url in [("What is <video>?", str(media / "clip.mp4")), ("Describe.", "http://[::1/v.mp4")] * 2:
        code, reply, _ = hostile.post({"model": "bundled", "messages": messages(url, text), "max_tokens": 4})
        assert code != 503, reply
    assert _answer(hostile, media)[0] == 200


def test_a_body_of_many_tiny_values_is_refused_unparsed(pair):
    """24 MiB of ``{},`` parse to 8 M dicts: GiBs and tens of seconds with the event loop held."""
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", max_body_mb=32)))
    try:
        raw = b'{"messages": [' + b"{}," * (8 * 2**20) + b"{}]}"
        t0 = time.monotonic()
        (code, reply, _), grown = rss_growth(lambda: live.post(None, raw=raw))
        assert code == 400 and "too many JSON values" in reply["error"]["message"], reply
        assert time.monotonic() - t0 < 5 and grown < 0.5, grown
    finally:
        live.close()


def test_the_largest_clip_the_budget_allows_stays_under_a_gib(hostile, media):
    body = {"model": "bundled", "messages": messages(data_url(media / "edge.mp4")), "max_tokens": 4}
    (code, reply, _), grown = rss_growth(lambda: hostile.post(body))
    assert code == 200 and reply["specvlm"]["video_tokens"] > 0
    assert grown < 1.0, grown


def test_a_body_past_the_limit_is_refused_before_it_is_read(hostile, media):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n")  # fmt: skip
    t0 = time.monotonic()
    reply, grown = rss_growth(lambda: _raw(hostile.port, head, [b"{" * 1000]))
    assert reply.startswith(b"HTTP/1.1 413") and b"--max-body-mb" in reply and time.monotonic() - t0 < 10
    # no Content-Length: chunked, 64 MiB offered; refused once the limit (~1.7 MiB here) is passed
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"%x\r\n%s\r\n" % (2**20, b" " * 2**20)
    reply, grown = rss_growth(lambda: _raw(hostile.port, head, [piece] * 64))
    assert reply.startswith(b"HTTP/1.1 413") and grown < 0.5
    assert _answer(hostile, media)[0] == 200


def test_a_body_sent_slowly_is_cut_off_at_the_timeout(pair, media):
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allowed_media_dir=media, timeout_s=1.5)))
    try:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"messages\": ")  # fmt: skip
        t0 = time.monotonic()
        reply = _raw(live.port, head, timeout=30)  # then nothing more
        assert reply.startswith(b"HTTP/1.1 504") and b"reading the request body timed out" in reply
        assert time.monotonic() - t0 < 10
    finally:
        live.close()


def test_connections_past_the_limit_get_503(pair, media):
    """Slow clients each hold a request open; past the server's limit (20 here) the rest are refused
    at once instead of queueing, and once they go the server answers again."""
    settings = ServeSettings(model_name="bundled", allowed_media_dir=media, max_queue=1, timeout_s=20)
    live = LiveServer(create_app(pair, settings))
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
    held = []
    try:
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
            sock.sendall(head)
            held.append(sock)
        time.sleep(1.0)
        refused = 0
        for sock in held:
            sock.setblocking(False)
            try:
                refused += sock.recv(4096).startswith(b"HTTP/1.1 503")
            except BlockingIOError:  # still waiting for its body: one of those let in
                pass
        assert refused >= 60 - 20 - 8, refused
    finally:
        for sock in held:
            sock.close()
    try:
        for _ in range(50):
            if live.get("/health")[0] == 200:
                break
            time.sleep(0.1)
        assert live.get("/health")[0] == 200
    finally:
        live.close()


def test_connections_without_a_whole_request_head_are_closed(pair, media):
    """Sockets that send nothing, or part of a head, used to hold their place under the connection
    limit for good (uvicorn's idle timer starts only after a first answer, and any byte stops it).
    Past the limit (20 here) a new connection sheds the one that has waited longest for a head, so
    a client opening idle connections as fast as it can never turns a real request away."""
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allowed_media_dir=media, max_queue=1)))
    live.server.config.timeout_keep_alive = 1  # read per connection: 5 s in service
    held = []
    try:
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
            if i % 2:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        time.sleep(0.3)
        assert live.get("/health")[0] == 200  # 31 connections, past the limit: the oldest idle ones went
        assert all(sock.recv(4096) == b"" for sock in held[:10])  # shed, oldest first
        time.sleep(1.5)
        assert all(sock.recv(4096) == b"" for sock in held)  # the rest closed at the deadline
        assert live.get("/health")[0] == 200
    finally:
        for sock in held:
            sock.close()
        live.close()


def test_a_flood_of_idle_connections_never_turns_requests_away(pair, media):
    """A client keeping three times the limit of idle connections open, reopening each as soon as it
    is closed: requests arriving all the while are answered, none with 503."""
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allowed_media_dir=media, max_queue=1)))
    stop, opened = threading.Event(), [0]

    def flood():
        socks = []
        while not stop.is_set():
            for sock in select.select(socks, [], [], 0)[0]:  # closed by the server: open another at once
                socks.remove(sock)
                sock.close()
            while len(socks) < 60:
                try:
                    socks.append(socket.create_connection(("127.0.0.1", live.port), timeout=1))
                    opened[0] += 1
                except OSError:
                    break
            time.sleep(0.005)
        for sock in socks:
            sock.close()

    attacker = threading.Thread(target=flood, daemon=True)
    attacker.start()
    try:
        time.sleep(0.5)
        answers = []
        for _ in range(20):
            answers.append(live.get("/health")[0])
            time.sleep(0.05)
        assert opened[0] > 60 and answers == [200] * 20, (opened[0], answers)
    finally:
        stop.set()
        attacker.join(timeout=10)
        live.close()


class SlowVideoHost:
    """A local HTTP host for --allow-remote-media: answers garbage, or a video a byte at a time,
    noting when the server stopped reading it."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port, self.dropped, self.hung_up_at = self.listener.getsockname()[1], threading.Event(), None
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        with conn:
            path = conn.recv(65536).split(b" ")[1]
            if path == b"/garbage.mp4":
                conn.sendall(b"NOT HTTP\r\n\r\n")
                return
            if path == b"/dripping-head.mp4":  # the status line, then a header byte every 0.5 s
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                conn.settimeout(0.5)
                try:
                    for i in range(40):
                        try:
                            if conn.recv(1) == b"":
                                break
                        except TimeoutError:
                            conn.sendall(b"X-Slow: drip\r\n"[i % 14 : i % 14 + 1])
                except OSError:
                    pass
                self.hung_up_at = time.monotonic()
                return
            if path == b"/stalling.mp4":  # a byte, then 1.8 s of silence before each next one
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\nx")
                conn.settimeout(1.8)
                for _ in range(10):
                    try:
                        if conn.recv(1) == b"":  # the server hung up
                            self.hung_up_at = time.monotonic()
                            return
                    except TimeoutError:
                        conn.sendall(b"x")
                return
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
                for _ in range(300):
                    conn.sendall(b"x")
                    time.sleep(0.05)
            except OSError:
                self.dropped.set()

    def close(self):
        self.listener.close()


def test_remote_media_failures_are_4xx_and_slow_hosts_are_dropped_at_the_timeout(pair, media):
    host = SlowVideoHost()
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allow_remote_media=True, timeout_s=1)))
    try:
        url = f"http://127.0.0.1:{host.port}"
        for bad in [url + "/garbage.mp4", "http://127.0.0.1:port/v.mp4"]:  # a bad status line, a bad port
            code, reply, _ = live.post({"model": "bundled", "messages": messages(bad), "max_tokens": 4})
            assert code == 400 and "cannot fetch the video" in reply["error"]["message"], reply
        code, reply, _ = live.post({"model": "bundled", "messages": messages(url + "/slow.mp4"), "max_tokens": 4})
        assert code == 504 and reply["error"]["code"] == "timeout"
        assert host.dropped.wait(5)  # the worker thread stopped reading too, instead of reading on for 15 s
    finally:
        live.close()
    # a byte every 1.8 s, 2 s to go: no one recv may outlast the deadline (one used to wait on to 3.6 s)
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allow_remote_media=True, timeout_s=2)))
    try:
        _dropped_within(live, host, url + "/stalling.mp4", 3.0)
    finally:
        live.close()
        host.close()


def test_a_slow_name_lookup_leaves_no_worker_thread_waiting(pair, monkeypatch):
    """The system's resolver takes as long as its name server does (a stand-in here: 4 s for one
    name); the fetching thread, which every request's media, prompt and generation need, waited
    through it past the request's 504. Now only a lookup thread of its own waits."""
    inside, real = set(), socket.getaddrinfo

    def slow(host, *a, **k):
        if host != "slow-names.test":
            return real(host, *a, **k)
        inside.add(threading.current_thread().name)
        try:
            time.sleep(4)
            return real("127.0.0.1", *a, **k)
        finally:
            inside.discard(threading.current_thread().name)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allow_remote_media=True, timeout_s=1)))
    try:
        t0 = time.monotonic()
        code, reply, _ = live.post({"model": "bundled", "messages": messages("http://slow-names.test:9/v.mp4"), "max_tokens": 4})
        assert code == 504 and reply["error"]["code"] == "timeout" and time.monotonic() - t0 < 2.5, reply
        time.sleep(0.3)
        assert inside == {"name lookup"}, inside  # the lookup alone is still waiting, on its own thread
    finally:
        live.close()


def _dropped_within(live, host: SlowVideoHost, url: str, seconds: float) -> None:
    """A request for ``url`` is answered 504 and ``host`` sees the server hang up within ``seconds``."""
    t0 = time.monotonic()
    code, reply, _ = live.post({"model": "bundled", "messages": messages(url), "max_tokens": 4})
    assert code == 504 and reply["error"]["code"] == "timeout", reply
    for _ in range(100):
        if host.hung_up_at:
            break
        time.sleep(0.05)
    assert host.hung_up_at and host.hung_up_at - t0 < seconds, (host.hung_up_at, t0)


def test_a_host_dripping_its_headers_is_dropped_at_the_timeout(pair):
    """http.client's timeout bounds each recv, not the whole: a host sending its headers a byte at a
    time held the fetching thread long past the 504, and a handful of such requests took every
    worker thread (media, prompts and generations all run on them): then every request got a 504."""
    host = SlowVideoHost()
    live = LiveServer(create_app(pair, ServeSettings(model_name="bundled", allow_remote_media=True, timeout_s=1)))
    try:
        _dropped_within(live, host, f"http://127.0.0.1:{host.port}/dripping-head.mp4", 2.5)
    finally:
        live.close()
        host.close()


def test_a_non_streamed_request_stops_when_its_client_leaves(hostile, media):
    body = json.dumps({"model": "bundled", "messages": messages(str(media / "clip.mp4")), "max_tokens": 1024}).encode()

    def leave():  # the client hangs up as soon as it has asked
        with socket.create_connection(("127.0.0.1", hostile.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    assert _stops_when_left(hostile, leave)
    for _ in range(100):
        if not json.loads(hostile.get("/health")[1])["busy"]:
            break
        time.sleep(0.05)
    assert json.loads(hostile.get("/health")[1])["busy"] is False


def test_a_request_whose_client_left_while_queued_is_never_generated(pair, settings, clip_path, monkeypatch):
    """While one request holds the model, another's client asks and hangs up: when its turn comes
    it is dropped before its prefill (it used to run the prefill, then stop at the first token)."""
    started, release, calls = threading.Event(), threading.Event(), []
    generate = pair.generate

    def held(*a, **k):  # the first generation holds the model until the test releases it
        calls.append(1)
        if len(calls) == 1:
            started.set()
            release.wait(30)
        return generate(*a, **k)

    monkeypatch.setattr(pair, "generate", held)
    live = LiveServer(create_app(pair, ServeSettings(**{**vars(settings), "max_queue": 2})))
    try:
        body = {"model": "bundled", "messages": messages(str(clip_path)), "max_tokens": 4}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(live.post, body)
            assert started.wait(30)
            before = _cancelled(live)
            raw = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", live.port)) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))  # fmt: skip
                time.sleep(0.5)  # prepared and queued behind the first
            time.sleep(0.3)
            release.set()
            assert first.result(60)[0] == 200
        for _ in range(100):
            if _cancelled(live) > before:
                break
            time.sleep(0.05)
        assert _cancelled(live) == before + 1 and len(calls) == 1, (len(calls), _cancelled(live) - before)
    finally:
        release.set()
        live.close()


def test_streams_past_the_queue_get_503_before_any_200(hostile, media):
    body = {"model": "bundled", "messages": messages(str(media / "clip.mp4")), "max_tokens": 256, "stream": True}

    def ask(_):
        request = urllib.request.Request(hostile.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read().decode(), None
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), error.headers.get("Retry-After")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, range(6)))
    busy = [r for r in results if r[0] == 503]
    ok = [r for r in results if r[0] == 200]
    assert busy and ok and len(busy) + len(ok) == 6
    assert all(r[2] and "queue_full" in r[1] for r in busy)
    assert all("[DONE]" in r[1] and '"error"' not in r[1] for r in ok)


def test_unauthenticated_paths_add_no_metric_series(pair, settings, clip_path):
    live = LiveServer(create_app(pair, ServeSettings(**{**vars(settings), "api_key": "k3y"})))
    try:
        for i in range(50):
            assert live.get(f"/probe/{i}/{'x' * 100}")[0] == 401
        text = live.get("/metrics", key="k3y")[1]
        assert "probe" not in text and 'endpoint="other",status="401"} 50.0' in text
        request = urllib.request.Request(live.url + "/v1/models", headers={"Authorization": "bearer k3y"})
        with urllib.request.urlopen(request, timeout=30) as response:  # the scheme is case-insensitive
            assert response.status == 200
    finally:
        live.close()


def test_unknown_paths_and_methods_get_the_same_error_object(server):
    """FastAPI's own 404 and 405 answered {"detail": ...}, not the error object clients parse."""
    for method, path, status in [("GET", "/v1/nope", 404), ("DELETE", "/v1/models", 405), ("GET", "/v1/chat/completions", 405)]:
        request = urllib.request.Request(server.url + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        error = json.loads(caught.value.read())["error"]
        assert caught.value.code == status and error["message"].startswith(f"{method} {path}: "), error
        assert status == 404 or caught.value.headers["Allow"]  # a 405 still names the methods allowed
    assert 'specvlm_requests_total{endpoint="other",status="404"}' in server.get("/metrics")[1]


def test_text_only_chat_is_answered_like_the_api(server, pair):
    expected = pair.generate(None, "Name a colour.", max_new_tokens=16).text
    out = server.client().chat.completions.create(model="bundled", messages=[{"role": "user", "content": "Name a colour."}],
                                                  max_tokens=16)  # fmt: skip
    assert out.choices[0].message.content == expected
    assert out.model_extra["specvlm"]["video_tokens"] == 0


def test_stop_strings_are_left_out_like_openai(server, clip_path, reference):
    stop = reference.split()[3]
    cut = reference[: reference.find(stop)]
    out = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)), stop=[stop])
    assert out.choices[0].message.content == cut and out.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content or "" for c in server.client().chat.completions.create(
        model="bundled", messages=messages(str(clip_path)), stop=stop, stream=True) if c.choices]  # fmt: skip
    assert "".join(pieces) == cut


def test_a_normal_request_is_answered_the_same_after_the_attack(hostile, media, pair):
    expected = pair.generate(str(media / "clip.mp4"), PROMPT, num_frames=FRAMES, max_new_tokens=24).text
    code, body, _ = _answer(hostile, media)
    assert code == 200 and body["choices"][0]["message"]["content"] == expected


@pytest.mark.parametrize("path, body", [
    ("/v1/models", b""),
    ("/v1/chat/completions", json.dumps({"model": "bundled", "messages": [{"role": "user", "content": "Hi."}],
                                         "max_tokens": 4, "stream": True}).encode()),
], ids=["json", "stream"])  # fmt: skip
def test_a_client_that_stops_reading_is_dropped_at_the_timeout(pair, caplog, path, body):
    """Each write of an answer is bounded: a client whose socket stays full (it reads nothing) would
    otherwise hold its connection, and a place under the connection limit, for good. Driven through
    the app's own middleware stack with an ASGI ``send`` that never completes, as uvicorn's does for
    a peer that never reads."""
    app = create_app(pair, ServeSettings(model_name="bundled", timeout_s=2))
    sent, received = [], []

    async def receive():
        if received:  # the body was read: wait for a disconnect that never comes
            await asyncio.Event().wait()
        received.append(body)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the socket is full and stays full

    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST" if body else "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}  # fmt: skip
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="specvlm.server"):
        asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=20))
    assert time.monotonic() - t0 < 10 and sent == ["http.response.start", "http.response.body"], sent
    assert "read nothing for 2 s" in caplog.text and "unhandled" not in caplog.text, caplog.text


def test_a_video_the_decoder_trips_on_is_a_400_not_a_500(hostile, media, caplog):
    """One fourcc changed in the sample description (``avc1`` -> ``zzzz``): PyAV opens the stream
    but gives it no codec context, and reading its size raised AttributeError: a 500 and a logged
    traceback instead of a 400 naming the video."""
    data = (media / "clip.mp4").read_bytes()
    at = data.rfind(b"avc1")
    url = "data:video/mp4;base64," + base64.b64encode(data[:at] + b"zzzz" + data[at + 4 :]).decode()
    with caplog.at_level(logging.WARNING, logger="specvlm.server"):
        code, reply, _ = hostile.post({"model": "bundled", "messages": messages(url), "max_tokens": 4})
    assert code == 400 and "unreadable video" in reply["error"]["message"], reply
    assert reply["error"]["param"] == "video_url" and "unhandled" not in caplog.text, caplog.text
    assert _answer(hostile, media)[0] == 200


def test_a_stream_its_client_closes_leaves_no_task_pending(server, clip_path, caplog):
    """The stream's wait for the next piece was left pending when the client went away: asyncio
    logged "Task was destroyed but it is pending!" (an ERROR) for every stream closed early."""
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(2):
            stream = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)),
                                                             stream=True, max_tokens=256)  # fmt: skip
            next(iter(stream))
            stream.close()
            for _ in range(100):
                if not json.loads(server.get("/health")[1])["busy"]:
                    break
                time.sleep(0.05)
            time.sleep(0.5)  # the stream's own cleanup, just after the engine's
            gc.collect()  # what a left-behind task would be collected with
    assert "Task was destroyed" not in caplog.text, caplog.text
    out = server.client().chat.completions.create(model="bundled", messages=messages(str(clip_path)), max_tokens=4)
    assert out.usage.completion_tokens == 4
