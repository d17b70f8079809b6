"""The ``specvlm`` command: generate, bench, visualize, serve.

    specvlm generate --target T --draft D --video clip.mp4 --prompt "Describe the video." --frames 32
    specvlm bench --target T --draft D --videos clips/ --prompt "Describe the video." --out runs/a
    specvlm visualize --target T --video clip.mp4 --prompt "Describe the video." --out picture.png
    specvlm serve --target T --draft D --port 8000

Every flag maps onto one argument of the library (``SpeculativeVLM.from_pretrained`` / ``generate``,
``PruneConfig``, ``DraftTree.parse``, ``load_samples``, ``specvlm.bench.harness``). Problems the user
can fix (an output path that cannot be written, a device this machine lacks, a checkpoint that is not
there, unsupported model, mismatched pair, missing dataset files or video, a prompt past the context,
out of GPU memory) end with exit code 2 and one line on stderr that names the flag; ``--debug`` raises
instead. Whatever can be known without a weight is checked before any model loads. The prompt-length
check lives here and in the harness, not in the engine. transformers' deprecation notices and loading
bars are kept quiet unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import re
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

from specvlm.bench.datasets import DATASETS
from specvlm.engine.sampling import MIN_SAMPLING, SEED_RANGE
from specvlm.pruning import STRATEGIES
from specvlm.video import DEFAULT_MAX_VIDEO_PIXELS, SERVED_MAX_VIDEO_PIXELS

DEFAULT_FRAMES = 32  # when neither --frames nor --fps is given (every frame of a long video won't fit)
DTYPES = ("auto", "float32", "float16", "bfloat16")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------------- models


def resolve_pair(target: str | None, draft: str | None, *, need_draft: bool = True) -> tuple[str, str | None]:
    """The (target, draft) checkpoints to load: hub ids or folders. The one place that decides them.

    With neither given, the bundled trained pair (specvlm.assets) is used.
    """
    if not target and not draft:
        from specvlm.assets import default_pair

        bundled_target, bundled_draft = default_pair()
        return str(bundled_target), str(bundled_draft) if need_draft else None
    wanted = (("--target", target), ("--draft", draft)) if need_draft else (("--target", target),)
    missing = [flag for flag, value in wanted if not value]
    if missing:
        raise CLIError(
            f"{' and '.join(missing)} required: a hub id or a local checkpoint folder "
            "(or give neither to use the bundled pair)"
        )
    return target, draft


DEFAULT_PROMPT = "Describe the video."


def _default_video_and_prompt(args) -> None:
    """No --video: the first bundled sample clip. No --prompt: ask for a description."""
    if args.video is None:
        from specvlm.assets import sample_videos

        args.video = str(sample_videos()[0].path)
    if args.prompt is None:
        args.prompt = DEFAULT_PROMPT


# A hub id: a name or org/name (what huggingface_hub accepts as a repo id).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _url_message(flag: str, name: str) -> str | None:
    """What to say of a URL given where a local path or a hub id is meant (None: not a URL)."""
    if not _URL.match(name) or Path(name).exists():
        return None
    if flag == "--video":
        return f"{flag} {name}: a URL; the command line reads local video files and folders (download it first)"
    from urllib.parse import urlsplit

    parts = urlsplit(name)
    repo = "/".join(parts.path.strip("/").split("/")[:2])
    hint = f" (here: {flag} {repo})" if parts.hostname in ("huggingface.co", "hf.co") and repo else ""
    return f"{flag} {name}: a URL; give a hub id (org/name){hint} or a local folder"


def _looks_like_path(name: str) -> bool:
    """A name meant as a local folder: starts with / . ~, or its parent folder exists here."""
    if name.startswith(("/", ".", "~")):
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def checkpoint_config(flag: str, name: str):
    """The config of the checkpoint that ``flag`` names, read without a weight; a CLIError that says
    what ``name`` is instead: a missing folder, a folder without config.json, or a hub id that is
    neither in the local Hugging Face cache nor reachable."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    from specvlm.models import checkpoint_folder_problem

    if (problem := checkpoint_folder_problem(name)) is not None:
        raise CLIError(f"{flag} {name}: {problem}")
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            return AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise CLIError(f"{flag} {name}: cannot read its config.json: {_one_line(error)}") from None
    if (url := _url_message(flag, name)) is not None:
        raise CLIError(url)
    if _looks_like_path(name) or not _HUB_ID.fullmatch(name):
        raise CLIError(f"{flag} {name}: no such folder")
    try:  # a hub id: the local cache first, so that nothing waits on the network
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    not_here = f"{flag} {name}: neither a folder here nor a hub id in the local Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise CLIError(f"{not_here}; HF_HUB_OFFLINE is set, so the hub is not asked")
    if not _hub_reachable():
        raise CLIError(f"{not_here}; {constants.ENDPOINT} cannot be reached (no internet?)")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise CLIError(f"{not_here}; the hub gave no model config for it: {_one_line(error)}") from None


def _family(flag: str, name: str, config) -> tuple[str, str]:
    """(family, how to call it) of a checkpoint, from its config alone: its model type, and the
    family too where that differs (a qwen2_vl checkpoint runs on the qwen2_5_vl adapter)."""
    from specvlm.models import UnsupportedModelError, adapter_class

    try:
        family = adapter_class(config.model_type).family
    except UnsupportedModelError as error:  # lists the families
        raise CLIError(f"{flag} {name}: {error}") from None
    return family, family if family == config.model_type else f"{config.model_type} (of the {family} family)"


def check_device(flag: str, value: str | int) -> None:
    """Refuse a device that torch does not see on this machine (or a name that is no device)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise CLIError(f"{flag} {value}: not a device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU here"
            raise CLIError(f"{flag} {value}: {why}; leave the flag out to run on the CPU")
        if device.index is not None and device.index >= count:
            raise CLIError(f"{flag} {value}: torch sees {count} GPU(s) here, cuda:0 to cuda:{count - 1}")
        return
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise CLIError(f"{flag} {value}: torch has no {device.type} device on this machine")


def _device_map(value: str | None):
    if value is None or not value.strip().startswith("{"):
        return value
    try:
        device_map = json.loads(value)
    except ValueError as error:
        raise CLIError(f"--device-map: neither a strategy name (auto, ...) nor a JSON object: {error}") from None
    if not isinstance(device_map, dict):
        raise CLIError("--device-map: a JSON object of module name -> device, e.g. '{\"\": \"cuda:0\"}'")
    return device_map


def check_attn(value: str | None) -> None:
    """Refuse an --attn that transformers has no attention for (it would say so only at loading).
    Hub kernels (org/repo[:name]) are left to transformers."""
    from transformers import AttentionInterface

    mapping = getattr(AttentionInterface, "_global_mapping", None)  # its registry, where this version has one
    if value is None or "/" in value or mapping is None:
        return
    known = ["eager", *(n for n in mapping if not n.startswith("specvlm_"))]
    if value not in known and value.split("|")[-1] not in known:
        raise CLIError(f"--attn {value}: not an attention implementation: one of {', '.join(known)}")


def check_models(args, *, need_draft: bool = True) -> tuple[str, str | None]:
    """The (target, draft) of the model flags, after every check that needs no weight: devices torch
    sees here, checkpoints that are there and supported, one family for both, a tensor-parallel size
    the target can take. (The tokenizers, and whether the two agree, are checked as the models load,
    before any weight.)"""
    for flag in ("--device", "--draft-device"):
        if (value := getattr(args, flag[2:].replace("-", "_"), None)) is not None:
            check_device(flag, value)
    check_attn(getattr(args, "attn", None))
    device_map = _device_map(getattr(args, "device_map", None))
    if isinstance(device_map, dict):
        for where in device_map.values():
            if where != "disk":
                check_device("--device-map", where)
    target, draft = resolve_pair(args.target, getattr(args, "draft", None), need_draft=need_draft)
    t_config = checkpoint_config("--target", target)
    t_family, t_name = _family("--target", target, t_config)
    from specvlm.models import adapter_class

    args.adapter_class = adapter_class(t_config.model_type)  # load_clip asks it about the frames
    if draft is not None:
        d_family, d_name = _family("--draft", draft, checkpoint_config("--draft", draft))
        if t_family != d_family:
            raise CLIError(
                f"target and draft must be of one family: --target {target} is {t_name}, --draft {draft} is {d_name}"
            )
    tp = getattr(args, "tp", None)
    if tp is not None:
        from specvlm.models import check_tensor_parallel

        try:
            check_tensor_parallel(t_config, tp)
        except ValueError as error:
            raise CLIError(f"--tp {tp}: {error}") from None
    return target, draft


def load_pair(args, *, prune=None):
    """A SpeculativeVLM from the command's model flags (checked first by check_models)."""
    from safetensors import SafetensorError

    from specvlm.api import SpeculativeVLM
    from specvlm.models import MissingTokenizerError

    target, draft = resolve_pair(args.target, args.draft)
    try:
        return SpeculativeVLM.from_pretrained(
            target,
            draft,
            dtype=args.dtype,
            device=args.device,
            device_map=_device_map(args.device_map),
            draft_device=args.draft_device,
            attn_implementation=args.attn,
            tree=args.tree,
            prune=prune,
            reindex=args.reindex,
            compile=False if args.no_compile else None,
            drafter=getattr(args, "drafter", "model"),
            tensor_parallel=getattr(args, "tp", None),
        )
    except MissingTokenizerError as error:
        raise CLIError(f"{'--target' if error.checkpoint == target else '--draft'} {_one_line(error)}") from None
    except OSError as error:  # a file missing from a checkpoint folder, a hub id that does not resolve
        raise CLIError(f"cannot load the models: {_one_line(error)}") from None
    except SafetensorError as error:  # a truncated or damaged weights file
        raise CLIError(f"cannot load the models: a damaged .safetensors file: {_one_line(error)}") from None


def load_target(args):
    """The target's adapter alone (visualize needs no draft; checked first by check_models)."""
    from safetensors import SafetensorError

    from specvlm.models import MissingTokenizerError, load_adapter

    target, _ = resolve_pair(args.target, None, need_draft=False)
    try:
        return load_adapter(
            target, dtype=args.dtype, device=args.device, device_map=_device_map(args.device_map),
            attn_implementation=args.attn,
        )
    except MissingTokenizerError as error:
        raise CLIError(f"--target {_one_line(error)}") from None
    except OSError as error:
        raise CLIError(f"cannot load the model: {_one_line(error)}") from None
    except SafetensorError as error:
        raise CLIError(f"cannot load the model: a damaged .safetensors file: {_one_line(error)}") from None


# ------------------------------------------------------------------------------ outputs and inputs


def _cannot_write(folder: Path) -> str | None:
    """Why no file can be made in ``folder``, None if one can: a real try (os.access says yes to
    root even where the file system says no)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as error:
        return error.strerror or str(error)


def check_output(flag: str, value: str, *, folder: bool = False) -> None:
    """Refuse an output path the command could not write, before anything runs: a ``folder`` to
    fill (new or existing), else a file (new or to overwrite). Missing parent folders are fine when
    they can be made (they are made when the output is written, not here)."""
    path = Path(value).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise CLIError(f"{flag} {value}: a file is there, not a folder")
    if not folder and path.is_dir():
        raise CLIError(f"{flag} {value}: a folder, not a file name (e.g. {path / 'picture.png'})")
    if not folder and path.exists():
        try:
            open(path, "ab").close()  # opened to append, written nothing: the file stays as it is
        except OSError as error:
            raise CLIError(f"{flag} {value}: cannot overwrite the file ({error.strerror})") from None
        return
    existing = path if path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"{flag} {value}: {existing} is a file, so no folder can be made in it")
    if (reason := _cannot_write(existing)) is not None:
        raise CLIError(f"{flag} {value}: cannot write in {existing} ({reason})")


def _check_input_folder(flag: str, value: str, what: str) -> None:
    path = Path(value).expanduser()
    if not path.exists():
        raise CLIError(f"{flag} {value}: no such folder ({what})")
    if not path.is_dir():
        raise CLIError(f"{flag} {value}: a file, not a folder ({what})")


def load_clip(args):
    """The --video clip (default: a bundled sample) sampled as the frame flags say; a notice on
    stderr when it has fewer frames than --frames asked for (load_video then takes them all)."""
    from specvlm.video import VideoBudgetError, VideoInputError, load_video

    _default_video_and_prompt(args)
    if (url := _url_message("--video", args.video)) is not None:
        raise CLIError(url)
    try:
        clip = load_video(args.video, **_frames(args), max_pixels=args.max_video_pixels)
    except VideoBudgetError as error:
        if args.debug:
            raise
        raise CLIError(budget_message(args.video, error)) from None
    except VideoInputError as error:
        if args.debug:
            raise
        raise CLIError(f"--video: {_one_line(error)}") from None
    if (adapter := getattr(args, "adapter_class", None)) is not None:
        try:  # frames the target's processor refuses, before its weights load
            adapter.check_clip(clip)
        except VideoInputError as error:
            if args.debug:
                raise
            raise CLIError(f"--video {args.video}: {_one_line(error)}") from None
    asked = min(args.frames, args.max_frames or args.frames) if args.frames else None
    if asked is not None and clip.num_frames < asked:
        print(f"specvlm {args.command}: note: --frames {args.frames}, but {args.video} has {clip.num_frames} "
              f"frames: using all {clip.num_frames}", file=sys.stderr)
    return clip


def budget_message(video, error) -> str:
    """A VideoBudgetError in the command line's terms."""
    width, height = error.size
    return (f"--video {video}: {error.frames} frames of {width}x{height} are {error.pixels:,} pixels, more than "
            f"--max-video-pixels {error.limit}: ask for fewer --frames or a lower --fps (or raise --max-video-pixels "
            "where the memory is there)")


def frame_options(num_frames: int | None, fps: float | None, max_frames: int | None) -> dict:
    """load_video's frame arguments from the user's: DEFAULT_FRAMES when neither a count nor a rate
    is given (shared by the command line and the lmms-eval model)."""
    num_frames = DEFAULT_FRAMES if num_frames is None and fps is None else num_frames
    return {"num_frames": num_frames, "fps": fps, "max_frames": max_frames}


def _frames(args) -> dict:
    return frame_options(args.frames, args.fps, args.max_frames)


def _prune_config(args):
    """``--prune`` & co. as a PruneConfig; ``none`` is plain speculative decoding (None)."""
    from specvlm.pruning import PruneConfig

    if args.prune == "none":
        return None
    return PruneConfig(
        strategy=args.prune, ratio=args.prune_ratio, stage1_mass=args.stage1_mass, seed=args.prune_seed
    )


# -------------------------------------------------------------------------------- argument types


def _number(kind, check, rule: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


_fraction = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
_temperature = _number(float, lambda v: v == 0 or MIN_SAMPLING <= v <= 100,
                       f"in [0, 100] (0 = greedy; a positive one at least {MIN_SAMPLING:g})")
_top_p = _number(float, lambda v: MIN_SAMPLING <= v <= 1, f"in (0, 1] (at least {MIN_SAMPLING:g})")
_port = _number(int, lambda v: 0 <= v <= 65535, "a port number in [0, 65535]")
_positive_int = _number(int, lambda v: v >= 1, ">= 1")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a finite number > 0")  # inf: int(inf) fails later
_count = _number(int, lambda v: v >= 0, ">= 0")
_seed = _number(int, lambda v: SEED_RANGE[0] <= v <= SEED_RANGE[1], "in [-2^63, 2^64 - 1] (what torch takes as a seed)")


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (shard I of N, from 0), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N, got {text}")
    return i, n


def _prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: ask something about the video")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are no UTF-8 reach Python as lone surrogates
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {text!r}") from None
    return text


def _stop(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty: give the text that ends the answer")
    return text


def _tree(text: str) -> str:
    from specvlm.engine.tree import parse_tree

    try:
        parse_tree(text)
    except ValueError as error:  # a message quoting a path thousands of ranks deep is cut short
        message = str(error)
        raise argparse.ArgumentTypeError(message if len(message) <= 300 else message[:300] + " ...") from None
    return text


# ---------------------------------------------------------------------------------------- parser


def _add_models(p: argparse.ArgumentParser, *, draft: bool = True, tp: bool = False) -> None:
    p.add_argument("--target", metavar="MODEL", help="target checkpoint: hub id or folder")
    if draft:
        p.add_argument("--draft", metavar="MODEL", help="draft of the same family and tokenizer: hub id or folder")
    p.add_argument("--dtype", choices=DTYPES, default="auto", metavar="DTYPE",
                   help=f"weights dtype: {' | '.join(DTYPES)} (default auto: the checkpoint's)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", help="device of the model(s), e.g. cuda:0 (default: cpu)")
    where.add_argument("--device-map", metavar="MAP", help="spread the target over devices: auto, ... or JSON")
    if tp:
        where.add_argument("--tp", type=_positive_int, metavar="N",
                           help="shard the target over N GPUs by tensor parallelism: run under "
                                "`torchrun --nproc-per-node N specvlm ...` (rank 0 prints and writes)")
    if draft:
        p.add_argument("--draft-device", metavar="DEVICE", help="device of the draft (default: the target's first)")
    p.add_argument("--attn", default="sdpa", metavar="IMPL", help="attention implementation (default sdpa)")


def _add_frames(p: argparse.ArgumentParser, max_pixels: int = DEFAULT_MAX_VIDEO_PIXELS) -> None:
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--frames", type=_positive_int, metavar="N",
                          help=f"sample N frames uniformly (default {DEFAULT_FRAMES})")
    sampling.add_argument("--fps", type=_positive_float, metavar="F", help="or one frame every 1/F seconds")
    p.add_argument("--max-frames", type=_positive_int, metavar="N", help="cap the sampled frames (useful with --fps)")
    p.add_argument("--max-video-pixels", type=_positive_int, default=max_pixels, metavar="N",
                   help="most decoded pixels (frames x height x width) a video may hold, checked before decoding "
                        f"(default 2^{max_pixels.bit_length() - 1}: {max_pixels // (1920 * 1080)} frames of 1080p)")


def _add_video(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", help="video file or folder of frames (default: a bundled sample clip)")
    p.add_argument("--prompt", type=_prompt, help="the question or instruction about the video (default: describe it)")
    _add_frames(p)


def _add_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prune", choices=STRATEGIES, default="specvlm", metavar="STRATEGY",
                   help=f"how the draft's video tokens are pruned: {', '.join(STRATEGIES)} "
                   "(default specvlm; none = plain SD)")
    p.add_argument("--prune-ratio", type=_fraction, default=0.9, metavar="R",
                   help="share of the video tokens removed (default 0.9)")
    p.add_argument("--stage1-mass", type=_fraction, default=0.4, metavar="P",
                   help="Stage I attention mass (default 0.4)")
    p.add_argument("--prune-seed", type=_seed, default=0, metavar="SEED", help="seed of the random strategy")


def _add_speculation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, metavar="N", help="(default 256)")
    p.add_argument("--tree", type=_tree, default="default", metavar="SPEC",
                   help="draft tree: default | chain:K | a file of paths | schedule:FILE (lines 'LENGTH TREE': a tree "
                   "per prompt length) (default: the published 25-node tree)")
    p.add_argument("--reindex", action="store_true", help="close the position gaps of pruned tokens in the draft")
    p.add_argument("--no-compile", action="store_true",
                   help="do not torch.compile the decode steps (on a GPU they are compiled by default: the first "
                        "call of a prompt-length bucket pays tens of seconds, later calls and processes reuse it)")


def _drafter(text: str) -> str:
    from specvlm.engine.drafters import make_drafter

    try:
        make_drafter(text, None)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _add_drafter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drafter", type=_drafter, default="model", metavar="RULE",
                   help="drafting rule: model (every level of the tree, default), adaptive[:P] (stop drafting "
                        "when the draft's confidence in its main path drops below P, default 0.3) or overlap "
                        "(draft the next tree while the target verifies, from a guess of its verdict); the "
                        "answer does not depend on it")


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="raise errors with their traceback")
    p.add_argument("--verbose", action="store_true",
                   help="show transformers' warnings, deprecation notices and loading bars (quiet by default)")


SPECULATION_FLAGS = ("--draft-device", "--tree", "--reindex", "--drafter", "--prune", "--prune-ratio",
                     "--stage1-mass", "--prune-seed")  # generate's flags the target alone never reads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specvlm", description="Lossless speculative decoding for video LLMs with a pruned draft."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", help="answer a prompt about a video", description=(
        "Answer a prompt about a video with speculative decoding. The answer is the target's own "
        "(greedy: token for token). The text streams to stdout as tokens are accepted; a stats line "
        "goes to stderr."))
    _add_models(g, tp=True)
    _add_video(g)
    _add_speculation(g)
    _add_drafter(g)
    g.add_argument("--temperature", type=_temperature, default=0.0, metavar="T", help="0 = greedy (default)")
    g.add_argument("--top-p", type=_top_p, metavar="P", help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--top-k", type=_positive_int, metavar="K", help="sample from the k most likely tokens")
    g.add_argument("--seed", type=_seed, metavar="SEED", help="seed of the sampling generator")
    g.add_argument("--stop", type=_stop, action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    _add_prune(g)
    g.add_argument("--no-speculative", action="store_true", help="decode with the target alone (the baseline)")
    g.add_argument("--json", action="store_true", help="print one JSON object (text, token_ids, stats) instead")
    g.add_argument("--picture", metavar="PNG", help="also write a picture of the draft's kept video tokens")
    _add_debug(g)
    g.set_defaults(func=cmd_generate, speculation_defaults={
        flag: g.get_default(flag[2:].replace("-", "_")) for flag in SPECULATION_FLAGS
    })

    b = sub.add_parser("bench", help="time target-only, SD and pruned SD on many videos", description=(
        "Run the target alone (the baseline), plain SD and pruned SD on the same inputs of every "
        "sample, greedy. Writes DIR/samples.jsonl (one line per sample and method, flushed at once; "
        "a rerun resumes), DIR/skipped.jsonl, DIR/summary.json, DIR/summary.md and plots."))
    _add_models(b, tp=True)
    source = b.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=DATASETS, metavar="NAME",
                        help=f"a benchmark in its published layout: {', '.join(DATASETS)} (with --data-root)")
    source.add_argument("--videos", metavar="DIR", help="a folder of videos (with --prompt)")
    b.add_argument("--data-root", metavar="DIR", help="the benchmark's local folder")
    b.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to keep (MVBench, MLVU, LongVideoBench)")
    b.add_argument("--limit", type=_count, metavar="N", help="the first N samples")
    b.add_argument("--prompt", type=_prompt, metavar="TEXT", help="one prompt for every sample (replaces the benchmark's)")
    _add_frames(b)
    _add_speculation(b)
    _add_drafter(b)
    b.add_argument("--methods", nargs="+", choices=("target", "sd", "pruned"), default=["target", "sd", "pruned"],
                   metavar="METHOD", help="of target, sd, pruned (default all); target, the baseline, always runs")
    b.add_argument("--prune", nargs="+", choices=STRATEGIES, default=["specvlm"], metavar="STRATEGY",
                   help=f"strategies of the pruned method: {', '.join(STRATEGIES)} (default specvlm)")
    b.add_argument("--prune-ratios", nargs="+", type=_fraction, default=[0.9], metavar="R",
                   help="ratios of the pruned method (default 0.9)")
    b.add_argument("--stage1-mass", type=_fraction, default=0.4, metavar="P",
                   help="Stage I attention mass (default 0.4)")
    b.add_argument("--hf-assisted", action="store_true",
                   help="also run Hugging Face assisted generation: target.generate(assistant_model=draft)")
    b.add_argument("--warmup", type=_count, default=1, metavar="N", help="untimed warm-up rounds (default 1)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (the same one resumes a run)")
    b.add_argument("--shard", type=_shard, metavar="I/N",
                   help="run only every N-th sample from the I-th (0-based) into DIR/shards/I-of-N; the shard that "
                        "finishes last writes the merged summary (default under torchrun: RANK/WORLD_SIZE)")
    b.add_argument("--merge", action="store_true", help="only merge the finished shards in DIR into one summary")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_debug(b)
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("visualize", help="picture the video tokens the draft would keep", description=(
        "Run the target's prefill (scored when the strategy ranks by attention), select the draft's "
        "video tokens and draw them over the frames. No draft model is needed."))
    _add_models(v, draft=False)
    _add_video(v)
    _add_prune(v)
    v.add_argument("--out", required=True, metavar="PNG", help="where to write the picture")
    _add_debug(v)
    v.set_defaults(func=cmd_visualize)

    s = sub.add_parser("serve", help="serve the pair over an OpenAI-compatible HTTP API", description=(
        "Serve chat completions about videos (POST /v1/chat/completions, plain or streamed; GET "
        "/v1/models, /health, /metrics) with speculative decoding behind them. Binds to 127.0.0.1 "
        "unless told otherwise. One generation runs at a time; others wait in a queue."))
    _add_models(s)
    _add_frames(s, SERVED_MAX_VIDEO_PIXELS)
    _add_speculation(s)
    _add_drafter(s)
    _add_prune(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_port, default=8000, help="(default 8000; 0 = any free port)")
    s.add_argument("--model-name", metavar="NAME", help="the model id clients send (default: the target's name)")
    s.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health (or set SPECVLM_API_KEY)")
    s.add_argument("--allowed-media-dir", metavar="DIR", help="serve local video paths under DIR (default: none)")
    s.add_argument("--max-media-mb", type=_positive_float, default=64.0, metavar="MB",
                   help="largest video a request may carry (default 64)")
    s.add_argument("--max-body-mb", type=_positive_float, metavar="MB",
                   help="largest request body (default: what --max-media-mb needs as base64, plus 1 MiB)")
    s.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) video URLs (default: refused)")
    s.add_argument("--max-queue", type=_count, default=8, metavar="N",
                   help="requests that may wait for the engine; more get 503 (default 8)")
    s.add_argument("--timeout", type=_positive_float, default=600.0, metavar="S",
                   help="per-request time limit in seconds, queueing included (default 600)")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    _add_debug(s)
    s.set_defaults(func=cmd_serve)
    return parser


# -------------------------------------------------------------------------------------- commands


def _stats_line(stats, speculative: bool) -> str:
    parts = [f"{stats.new_tokens} tokens"]
    if speculative:
        parts.append(f"tau {stats.tau:.2f}")
    parts += [f"{stats.tokens_per_s:.1f} tokens/s", f"prefill {stats.prefill_s:.2f}s, decode {stats.decode_s:.2f}s"]
    if not speculative:
        parts.append("target only")
    elif stats.video_tokens:
        share = 100 * stats.draft_video_tokens / stats.video_tokens
        parts.append(f"draft video tokens {stats.draft_video_tokens}/{stats.video_tokens} kept ({share:.1f}%)")
    return " | ".join(parts)


def _render(clip, layout, selection, scores, path: str, title: str) -> str:
    from specvlm.pruning import PruneConfig, render_selection, select

    if selection is None:  # plain SD: the draft keeps every token
        selection = select(PruneConfig(strategy="none"), layout)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    render_selection(clip, layout, selection, scores, path, title=title)
    n = len(layout)
    return (
        f"kept {len(selection)}/{n} video tokens ({100 * len(selection) / max(n, 1):.1f}%): "
        f"Stage I {selection.num_stage1}, Stage II {selection.num_stage2} -> {path}"
    )


def speculation_flags_given(args) -> list[str]:
    """generate's flags that shape speculative decoding alone, given other than their defaults."""
    return [flag for flag, default in args.speculation_defaults.items()
            if getattr(args, flag[2:].replace("-", "_")) != default]


def cmd_generate(args) -> int:
    speculative = not args.no_speculative
    if args.picture and not speculative:
        raise CLIError("--picture shows the draft's kept video tokens, so it needs speculative decoding "
                       "(drop --no-speculative, or use `specvlm visualize`)")
    if not speculative and (unread := speculation_flags_given(args)):  # said, not refused: the same command
        # with --no-speculative appended is how one runs the baseline of an A/B
        print(f"specvlm generate: note: --no-speculative decodes with the target alone; {', '.join(unread)} "
              "not used", file=sys.stderr)
    truncation = [f"{flag} {value}" for flag, value in (("--top-p", args.top_p), ("--top-k", args.top_k)) if value is not None]
    if truncation and args.temperature == 0:  # greedy decoding would ignore them: not the sampling asked for
        raise CLIError(f"{' and '.join(truncation)} shape sampling, but --temperature is 0 (greedy decoding): "
                       "give a --temperature > 0 too, e.g. --temperature 0.7")  # fmt: skip
    if args.picture:
        check_output("--picture", args.picture)
    check_models(args)
    prune = _prune_config(args)
    clip = load_clip(args)  # a bad video fails before any model loads

    from specvlm.api import TextDeltas
    from specvlm.bench.harness import stats_dict
    from specvlm.engine.distributed import is_main

    pair = load_pair(args, prune=prune)

    utf8 = codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name == "utf-8"
    if not utf8 and hasattr(sys.stdout, "reconfigure"):  # an answer in Chinese on an ASCII or cp1252 stdout:
        sys.stdout.reconfigure(errors="replace")  # '?' for what it cannot hold, not a UnicodeEncodeError
    deltas = TextDeltas(pair.target.tokenizer)
    main_rank = is_main()  # under torchrun --tp, rank 0 alone prints

    def stream(new: list[int]) -> None:  # print text as tokens are accepted (as SpeculativeVLM.stream)
        if (piece := deltas.add(new)) and main_rank:
            sys.stdout.write(piece)
            sys.stdout.flush()

    out = pair.generate(
        clip,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_strings=tuple(args.stop),
        speculative=speculative,
        on_tokens=None if args.json else stream,
        prune=prune,
    )
    if not main_rank:
        return 0
    if args.json:
        print(json.dumps({
            "text": out.text,
            "token_ids": out.token_ids,
            "speculative": speculative,
            "prune": asdict(prune) if speculative and prune is not None else None,
            "stats": stats_dict(out.stats),
        }, ensure_ascii=not utf8))  # \u escapes keep every character where stdout is no UTF-8
    else:
        sys.stdout.write(deltas.rest(out.text) + "\n")  # whatever the stream still held back
        sys.stdout.flush()
        print(_stats_line(out.stats, speculative), file=sys.stderr)
    if args.picture:
        title = "plain SD" if prune is None else f"{prune.strategy} ratio {prune.ratio:g}"
        print(_render(out.clip, out.layout, out.selection, out.scores, args.picture, title), file=sys.stderr)
    return 0


def cmd_visualize(args) -> int:
    check_output("--out", args.out)
    check_models(args, need_draft=False)

    from specvlm.pruning import PruneConfig, needs_scores, select

    config = _prune_config(args) or PruneConfig(strategy="none")
    clip = load_clip(args)
    adapter = load_target(args)
    features = adapter.build_inputs(clip, args.prompt)
    adapter.check_context(features["input_ids"], 0)
    prepared = adapter.prepare(features)
    scores = None
    if needs_scores(config.strategy):
        _, scores = adapter.prefill_with_scores(prepared, adapter.new_cache(prepared.length))
        scores = scores.cpu()
    selection = select(config, prepared.video, scores)
    print(_render(clip, prepared.video, selection, scores, args.out, f"{config.strategy} ratio {config.ratio:g}"))
    return 0


def _torchrun_shard() -> tuple[int, int] | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def cmd_bench(args) -> int:
    from specvlm.bench.datasets import load_samples
    from specvlm.bench.harness import Bench, BenchSettings, check_run_settings, merge_shards, method_list, shard_dir
    from specvlm.bench.report import markdown, write_report

    out = Path(args.out)
    if args.merge:
        try:
            records, skipped, settings = merge_shards(out)
        except ValueError as error:
            raise CLIError(str(error)) from None
        sys.stdout.write(markdown(write_report(out, records, skipped, settings)))
        return 0
    check_output("--out", args.out, folder=True)
    if args.videos is not None or args.dataset == "folder":
        flag = "--videos" if args.videos is not None else "--dataset folder"
        if not args.prompt:
            raise CLIError(f"{flag} needs --prompt: a folder of videos has no annotations")
        if args.tasks:
            raise CLIError(f"--tasks applies to the benchmarks ({', '.join(d for d in DATASETS if d != 'folder')}), "
                           f"not to {flag}")
    if args.videos is not None:
        if args.data_root:  # it would be ignored: which folder was meant?
            raise CLIError(f"--data-root goes with --dataset; --videos {args.videos} is itself the folder to run "
                           f"(drop one of --videos and --data-root {args.data_root})")
        _check_input_folder("--videos", args.videos, "the videos to run")
        name, root = "folder", args.videos
    elif args.dataset is not None:
        if not args.data_root:
            raise CLIError(f"--dataset {args.dataset} needs --data-root DIR (the benchmark's local folder)")
        _check_input_folder("--data-root", args.data_root, f"the local copy of {args.dataset}")
        name, root = args.dataset, args.data_root
    else:
        raise CLIError("one of --dataset or --videos is required (or --merge)")
    from specvlm.engine.distributed import is_main

    main_rank = is_main()  # under torchrun --tp: rank 0 writes, every rank runs the same samples
    shard = args.shard or (None if args.tp else _torchrun_shard())
    if shard is not None and args.device and args.device.startswith("cuda") and ":" not in args.device:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per data-parallel rank
    target, draft = check_models(args)
    frames = _frames(args)
    settings = BenchSettings(
        target=target, draft=draft, num_frames=frames["num_frames"], fps=frames["fps"],
        max_frames=frames["max_frames"], max_new_tokens=args.max_new_tokens, tree=args.tree,
        reindex=args.reindex, stage1_mass=args.stage1_mass, dtype=args.dtype, max_video_pixels=args.max_video_pixels,
        prompt=args.prompt, compile=not args.no_compile, attn=args.attn, drafter=args.drafter,
    )
    methods = method_list(args.methods, args.prune, args.prune_ratios, stage1_mass=args.stage1_mass,
                          hf_assisted=args.hf_assisted)
    with warnings.catch_warnings():  # samples whose video is missing go to skipped.jsonl instead
        warnings.simplefilter("ignore")
        samples = load_samples(name, root, limit=args.limit, prompt=args.prompt, tasks=args.tasks, skip_missing=True)
    missing = samples.skipped
    run_dir = out
    if shard is not None:
        i, n = shard
        run_dir = shard_dir(out, i, n)
        samples, missing = list(samples)[i::n], (missing if i == 0 else [])
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_run_settings(run_dir, settings, write=main_rank)
    except ValueError as error:
        raise CLIError(str(error)) from None
    bench = Bench(methods, settings, run_dir, warmup=args.warmup, progress=not args.no_progress and main_rank,
                  write=main_rank)  # fmt: skip
    bench.record_missing(missing)
    if bench.pending(samples):  # the models load only when something is left to run
        result = bench.run(load_pair(args), samples)
        print(f"{result.new_records} new records, {result.new_skipped} samples skipped", file=sys.stderr)
        if args.frames and result.short_videos:
            shown = ", ".join(result.short_videos[:3]) + (", ..." if len(result.short_videos) > 3 else "")
            print(f"specvlm bench: note: --frames {args.frames}, but {len(result.short_videos)} video(s) have fewer "
                  f"frames ({shown}): each was used whole", file=sys.stderr)
    else:
        print(f"every (sample, method) is already in {run_dir / 'samples.jsonl'}", file=sys.stderr)
    if not main_rank:
        return 0
    if shard is None:
        summary = write_report(out, bench.samples_log.records, bench.skipped_log.records, settings.as_dict())
        sys.stdout.write(markdown(summary))
        return 0
    bench.mark_done()
    try:
        records, skipped, merged_settings = merge_shards(out)
    except ValueError as error:  # other shards still running (or not started)
        print(f"shard {shard[0]}/{shard[1]} done; {error}", file=sys.stderr)
        return 0
    sys.stdout.write(markdown(write_report(out, records, skipped, merged_settings)))
    return 0


def cmd_serve(args) -> int:
    try:
        import uvicorn  # noqa: F401

        from specvlm.server import ServeSettings, api_key_from_env, serve
    except ImportError as error:
        raise CLIError(f"serving needs the serve extra: pip install \"specvlm[serve]\" ({error.name} is missing)") from None
    media_dir = None
    if args.allowed_media_dir:
        media_dir = Path(args.allowed_media_dir)
        if not media_dir.is_dir():
            raise CLIError(f"--allowed-media-dir {args.allowed_media_dir}: not a folder")
    target, _ = check_models(args)
    pair = load_pair(args, prune=_prune_config(args))
    frames = _frames(args)
    settings = ServeSettings(
        model_name=args.model_name or (args.target or "specvlm-bundled"), max_queue=args.max_queue,
        timeout_s=args.timeout, api_key=api_key_from_env(args.api_key), allowed_media_dir=media_dir,
        max_media_mb=args.max_media_mb, allow_remote_media=args.allow_remote_media,
        num_frames=frames["num_frames"], fps=frames["fps"], max_frames=frames["max_frames"] or 256,
        max_new_tokens=args.max_new_tokens, max_video_pixels=args.max_video_pixels, max_body_mb=args.max_body_mb,
    )  # fmt: skip
    where = f"http://{args.host}:{args.port}/v1"
    print(f"specvlm serve: {settings.model_name} ({target}) at {where}"
          f"{' (API key required)' if settings.api_key else ''}", file=sys.stderr)  # fmt: skip
    serve(pair, settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0


# ------------------------------------------------------------------------------------------ main


_USER_ERRORS = (
    ("specvlm.models.base", "UnsupportedModelError"),
    ("specvlm.engine.speculative", "PairMismatchError"),
    ("specvlm.bench.datasets", "DatasetError"),
    ("specvlm.video", "VideoInputError"),
    ("specvlm.models.base", "PromptTooLongError"),
    ("torch", "OutOfMemoryError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    # Only from modules already imported: an error of a class whose module never loaded cannot have
    # been raised, and importing the engine just to say so costs seconds.
    loaded = [getattr(sys.modules[module], name, None) for module, name in _USER_ERRORS if module in sys.modules]
    return (CLIError, *(cls for cls in loaded if cls is not None))


# The library's messages name its keyword arguments; the CLI user set them by these flags.
_FLAGS = {"num_frames": "--frames", "max_frames": "--max-frames", "fps": "--fps", "tasks": "--tasks",
          "limit": "--limit", "prompt": "--prompt", "max_new_tokens": "--max-new-tokens",
          "device_map": "--device-map", "draft_device": "--draft-device"}
_KEYWORD = r"(?<![\w/.-])(" + "|".join(_FLAGS) + r")="  # not inside a word or a path
_IDENTIFIER = r"(?<![\w/.-])(" + "|".join(k for k in _FLAGS if "_" in k) + r")(?![\w/])"


def _in_flag_terms(text: str) -> str:
    """``text`` with the Python API's names (``load_samples(...)``, ``num_frames=...``) as flags."""
    text = re.sub(r"load_samples\(([^()]*)\)",
                  lambda m: " ".join(_FLAGS[k] for k in re.findall(r"(\w+)=", m[1]) if k in _FLAGS) or "the flags",
                  text)  # fmt: skip
    text = text.replace("(or no sampling argument)", "(or neither --frames nor --fps)")
    text = re.sub(r"(?<![\w-])fps sampling\b", "--fps sampling", text)
    text = re.sub(_KEYWORD + r"\.\.\.", lambda m: _FLAGS[m[1]], text)
    text = re.sub(_KEYWORD + r"(?=\S)", lambda m: _FLAGS[m[1]] + " ", text)
    text = re.sub(_KEYWORD, lambda m: _FLAGS[m[1]], text)
    return re.sub(_IDENTIFIER, lambda m: _FLAGS[m[1]], text)


def _message(error: BaseException) -> str:
    from specvlm.bench.harness import OOM_HINT, is_oom

    if is_oom(error):
        first = (str(error).strip().splitlines() or [""])[0][:160]
        return f"out of GPU memory ({first}): {OOM_HINT}"
    return _in_flag_terms(_one_line(error))


# Python warnings about transformers' own internals, which no flag changes, matched by message so that
# every other warning still shows (--verbose shows these too). Our own calls pass the cache by its new
# name (models/base.py); Hugging Face's generate (bench --hf-assisted) may still use the old one.
_KNOWN_NOISE = (r"`past_key_values` is deprecated",)


@contextlib.contextmanager
def _quiet_third_party(verbose: bool):
    """transformers' logging below errors, its and the hub's progress bars and the known deprecation
    notices off while a command runs (restored after: main() is also called in-process)."""
    if verbose:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for message in _KNOWN_NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_bars_off:
            disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error argparse has printed (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        with _quiet_third_party(args.verbose):
            code = args.func(args)
            sys.stdout.flush()  # a reader gone away is seen here, not in Python's flush at exit
            return code
    except KeyboardInterrupt:
        print(f"specvlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): nothing left to say, and no one to say it to
        with contextlib.suppress(OSError, ValueError):  # Python's own flush at exit would raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:
        if args.debug or not isinstance(error, _user_errors()):
            raise
        print(f"specvlm {args.command}: error: {_message(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
