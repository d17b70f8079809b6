"""Model adapters, one file per family, and loading a checkpoint from a hub id or a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from specvlm.layout import VideoTokenLayout
from specvlm.models.base import PreparedInputs, PromptTooLongError, UnsupportedModelError, VideoLMAdapter
from specvlm.models.llava_onevision import LlavaOnevisionAdapter
from specvlm.models.qwen2_5_vl import Qwen2_5_VLAdapter
from specvlm.models.qwen3_vl import Qwen3VLAdapter

ADAPTERS: tuple[type[VideoLMAdapter], ...] = (LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter)

__all__ = [
    "ADAPTERS",
    "MissingTokenizerError",
    "PreparedInputs",
    "PromptTooLongError",
    "UnsupportedModelError",
    "VideoLMAdapter",
    "VideoTokenLayout",
    "adapter_class",
    "adapter_for",
    "check_placement",
    "check_tensor_parallel",
    "check_tokenizer",
    "checkpoint_config",
    "checkpoint_folder_problem",
    "load_adapter",
    "load_processor",
    "supported_model_types",
]


def supported_model_types() -> tuple[str, ...]:
    return tuple(t for cls in ADAPTERS for t in cls.model_types)


def adapter_class(model_type: str) -> type[VideoLMAdapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise UnsupportedModelError(
        f"unsupported model type {model_type!r}; supported families: {', '.join(supported_model_types())}"
    )


# What a tokenizer is read from: the fast tokenizers' file, and the slow ones' vocabulary files
# (BPE as Qwen2's: vocab.json + merges.txt; sentencepiece; WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt")


class MissingTokenizerError(FileNotFoundError):
    """A checkpoint without its tokenizer's files: transformers then fails to build one, or builds one
    that knows only the special tokens (and the pair check would report two different tokenizers).
    ``checkpoint`` is the name or folder given."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


def _missing_tokenizer(name_or_path: str, files, why: str = "") -> MissingTokenizerError:
    return MissingTokenizerError(
        f"{name_or_path}: the checkpoint has no tokenizer ({why or 'none of ' + ', '.join(files) + ' is there'}): "
        "copy the tokenizer files of the model it was made from into it", str(name_or_path)
    )


def check_tokenizer(name_or_path: str, tokenizer) -> None:
    """MissingTokenizerError when ``tokenizer`` (loaded from ``name_or_path``) has no vocabulary
    beyond its added special tokens: what transformers builds when the vocabulary files are gone."""
    from pathlib import Path

    n_special = len(tokenizer.get_added_vocab())
    if len(tokenizer.get_vocab()) > n_special:
        return
    files = list(dict.fromkeys(getattr(type(tokenizer), "vocab_files_names", {}).values())) or list(TOKENIZER_FILES)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in files):
        raise _missing_tokenizer(name_or_path, files)
    raise _missing_tokenizer(name_or_path, files, f"its tokenizer knows only {n_special} special tokens, no "
                             f"vocabulary from {', '.join(files)}")  # fmt: skip


def load_processor(name_or_path: str, *, tokenizer_only: bool = False):
    """The checkpoint's processor (or its tokenizer alone: no image processor, quick), with a
    MissingTokenizerError naming the checkpoint when its tokenizer files are missing."""
    from pathlib import Path

    from transformers import AutoProcessor, AutoTokenizer

    try:
        loaded = (AutoTokenizer if tokenizer_only else AutoProcessor).from_pretrained(name_or_path)
    except ValueError:  # e.g. "Couldn't instantiate the backend tokenizer": say which files are missing
        folder = Path(name_or_path).expanduser()
        if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise _missing_tokenizer(name_or_path, TOKENIZER_FILES) from None
        raise
    check_tokenizer(name_or_path, getattr(loaded, "tokenizer", loaded))
    return loaded


def adapter_for(model, processor) -> VideoLMAdapter:
    """Wrap an already loaded model and processor."""
    return adapter_class(model.config.model_type)(model, processor)


def checkpoint_folder_problem(name_or_path) -> str | None:
    """What is wrong with a name that exists here as a checkpoint: a folder without config.json, or a
    file; None for a checkpoint folder, or a name that is no local path (a hub id, or a missing one)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else "the folder has no config.json, so it holds no model checkpoint"
    if path.exists():
        return "a file, not a checkpoint folder (give the folder that holds config.json)"
    return None


def checkpoint_config(name_or_path):
    """The config of a hub id or a local folder, read without a weight. A name that is meant as a
    folder (it exists, or starts with / . ~) and holds no checkpoint is a FileNotFoundError that says
    so (transformers would call it a malformed repo id, or a config without model_type)."""
    from transformers import AutoConfig

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"a checkpoint is a hub id or a folder, got {name_or_path!r}"[:300])
    if (problem := checkpoint_folder_problem(name_or_path)) is not None:
        raise FileNotFoundError(f"{name_or_path}: {problem}")
    if not Path(name_or_path).expanduser().exists() and str(name_or_path).startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{name_or_path}: no such checkpoint folder")
    return AutoConfig.from_pretrained(name_or_path)


def check_placement(dtype, device, device_map, tensor_parallel, *, device_name: str = "device") -> None:
    """ValueError for a dtype, device or placement no model can be loaded with (no file is read)."""
    if device is not None and device_map is not None:
        raise ValueError("give either device or device_map, not both")
    if isinstance(dtype, str) and dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype must be 'auto', a torch.dtype or the name of one (float32, float16, bfloat16), "
                         f"got dtype={dtype!r}")  # fmt: skip
    if device is not None:
        try:  # a bad name would fail only once the weights are read
            torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"{device_name} must be a torch device such as 'cpu' or 'cuda:0', "
                             f"got {device_name}={device!r}"[:300]) from None
    if tensor_parallel is not None and (device_map is not None or device is not None):
        raise ValueError("tensor parallelism places the model itself (one GPU per rank): give no device or device map")


def load_adapter(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    attn_implementation: str | None = "sdpa",
    tensor_parallel: int | None = None,
    config=None,
    processor=None,
) -> VideoLMAdapter:
    """Load a model and its processor from a hub id or a local folder, through from_pretrained
    (``config`` and ``processor``, when given, are ``checkpoint_config``'s and ``load_processor``'s,
    already read).

    The family and the tokenizer are checked before any weight is read. ``tensor_parallel=N`` (under
    ``torchrun --nproc-per-node N``) shards the model over the N ranks by transformers' own
    tensor-parallel plan (``tp_plan="auto"``: NCCL on GPUs, one per rank; gloo on CPUs).
    """
    from transformers import AutoModelForImageTextToText

    check_placement(dtype, device, device_map, tensor_parallel)
    if config is None:
        config = checkpoint_config(name_or_path)
    cls = adapter_class(config.model_type)
    if tensor_parallel is not None:
        check_tensor_parallel(config, tensor_parallel)
    if processor is None:
        processor = load_processor(name_or_path)  # before the weights: a checkpoint without a tokenizer fails fast
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    extra = {} if tensor_parallel is None else {"tp_plan": "auto"}
    model = AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation, **extra
    )
    if device is not None:
        model = model.to(device)
    model.eval()
    adapter = cls(model, processor)
    adapter.tensor_parallel = tensor_parallel is not None
    return adapter


def check_tensor_parallel(config, size: int) -> None:
    """Refuse, before any weight is read, a tensor-parallel size this model or launch cannot take."""
    import os

    text = getattr(config, "text_config", None) or config
    heads, kv_heads = int(text.num_attention_heads), int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    if size < 1 or heads % size or kv_heads % size:
        raise ValueError(
            f"tensor parallelism over {size} ranks needs the heads divisible by {size}: this model has "
            f"{heads} attention heads and {kv_heads} key/value heads"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != size:
        raise ValueError(
            f"tensor parallelism over {size} ranks runs under `torchrun --nproc-per-node {size}` "
            f"(this process sees a world of {world})"
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if torch.cuda.is_available() and local > torch.cuda.device_count():
        raise ValueError(
            f"{local} ranks on this machine but {torch.cuda.device_count()} visible GPUs: "
            "tensor parallelism takes one GPU per rank"
        )
