"""The files of a Hugging Face checkpoint directory: `config.json`, single or sharded safetensors
(with `model.safetensors.index.json`), the tokenizer's files. Every read and write of the
interop package goes through the few functions here (one place to teach other file systems)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile

from phd_jax import paths
from phd_jax.errors import ConfigError, fail

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
# The tokenizer's files that travel with a checkpoint (whichever of them exist).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def is_dir(path: str) -> bool:
    return paths.isdir(path)


def read_json(path: str, what: str) -> dict:
    """A JSON object from `path`; FileNotFoundError / ConfigError naming the file otherwise."""
    if not paths.isfile(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        out = json.loads(paths.read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise ConfigError(f"{what}: {path} must hold a JSON object")
    return out


def read_config(path: str) -> tuple[dict, str]:
    """(the `config.json` dict of checkpoint directory `path`, its file name for messages)."""
    if not is_dir(path):
        raise FileNotFoundError(f"Hugging Face checkpoint directory {path} does not exist")
    file = os.path.join(path, CONFIG_FILE)
    return read_json(file, "Hugging Face config"), file


@contextlib.contextmanager
def safe_open(file: str):
    """`safetensors.safe_open(file)` whose failures (a truncated download, a file that is not
    safetensors) are a ConfigError naming the file."""
    from safetensors import SafetensorError
    from safetensors import safe_open as _open

    try:
        with _open(file, framework="np") as f:
            yield f
    except SafetensorError as e:
        raise ConfigError(
            f"{file} is not a readable safetensors file ({str(e).strip() or type(e).__name__}): it may be "
            f"truncated (an interrupted download or copy); download or write it again"
        ) from None


def weight_files(path: str) -> dict[str, str]:
    """tensor name -> safetensors file, from the index (sharded) or the single file."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(f"{index} has no 'weight_map'")
        missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(path, f))})
        if missing:
            raise FileNotFoundError(f"{index} lists shard(s) that are missing: {', '.join(missing)} (in {path})")
        return {k: os.path.join(path, f) for k, f in weight_map.items()}
    single = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(single):
        found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        raise FileNotFoundError(
            f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}"
            + (f" (found {found}, but no index to say what they hold)" if found else "")
        )
    with safe_open(single) as f:
        return dict.fromkeys(f.keys(), single)


def _parse_size(size) -> int:
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.I)
    if not m:
        fail("max_shard_size", size, "an int number of bytes > 0 or a string like '500MB' / '2GB'")
    unit = (m[2] or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return max(1, int(float(m[1]) * mult))


def _shards(tensors: dict, max_shard_size) -> list[list[str]]:
    names = list(tensors)
    if max_shard_size is None:
        return [names]
    limit, shards, size = _parse_size(max_shard_size), [[]], 0
    for n in names:
        if shards[-1] and size + tensors[n].nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += tensors[n].nbytes
    return shards


def write_checkpoint(
    path: str, hf_config: dict, tensors: dict, *, max_shard_size=None, overwrite=False, tokenizer_dir=None
) -> str:
    """Write `config.json`, the safetensors (sharded past `max_shard_size`) and the tokenizer's files
    of `tokenizer_dir` into directory `path`: all into a temporary directory first, then moved, so a
    failure leaves `path` as it was. Refuses a directory that already holds a checkpoint unless
    `overwrite`."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        fail("path", path, "exists and is not a directory")
    old = [
        f
        for f in (os.listdir(path) if os.path.isdir(path) else [])
        if f in (CONFIG_FILE, INDEX_FILE) or f.endswith(".safetensors")
    ]
    if old and not overwrite:
        fail(
            "path",
            path,
            f"already holds a checkpoint ({', '.join(sorted(old))}); pass overwrite=True or choose an empty directory",
            FileExistsError,
        )
    if tokenizer_dir is not None and not os.path.isdir(tokenizer_dir):
        fail("tokenizer_dir", tokenizer_dir, "must be a directory holding tokenizer.json (a checkpoint's folder)")
    shards = _shards(tensors, max_shard_size)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".hf-save-", dir=parent)
    try:
        meta = {"format": "pt"}  # what transformers expects in the safetensors metadata
        if len(shards) == 1:
            save_file({n: tensors[n] for n in shards[0]}, os.path.join(tmp, WEIGHTS_FILE), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file({n: tensors[n] for n in shard}, os.path.join(tmp, fname), metadata=meta)
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.nbytes for t in tensors.values())
            with open(os.path.join(tmp, INDEX_FILE), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2)
        if tokenizer_dir is not None:
            for fname in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(tokenizer_dir, fname)):
                    shutil.copy(os.path.join(tokenizer_dir, fname), tmp)
        os.makedirs(path, exist_ok=True)
        for f in old:
            os.remove(os.path.join(path, f))
        for f in os.listdir(tmp):
            os.replace(os.path.join(tmp, f), os.path.join(path, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def has_tokenizer(path: str) -> bool:
    """True when checkpoint directory `path` carries a `tokenizer.json`."""
    return paths.isfile(os.path.join(path, "tokenizer.json"))
