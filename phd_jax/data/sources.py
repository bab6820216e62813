"""Document sources: random-access sequences of documents (`len`, `[i] -> str`).

`config.data.source` (and `data.eval_source`) names one:
- `shakespeare` (default): the embedded corpus, a TFDS dataset prepared on first use under
  `data.data_dir` (`phd_jax.data.shakespeare`);
- `tfds:NAME[:VERSION]`: a TFDS dataset already prepared as `array_record` under
  `data.data_dir`, read with `tfds.data_source` (random access, no TensorFlow);
  `data.text_key` names the text feature, `data.train_split` / `data.eval_split` the splits
  (TFDS slicing such as `train[:99%]` works);
- `text:GLOB`: one document per file (UTF-8);
- `jsonl:GLOB`: one document per line, the string field `data.text_key` (`.jsonl.gz` too).
Local files must be text: one with NUL bytes, or with more than `MAX_UNDECODABLE` of its bytes
not UTF-8, is refused naming the file (a few bad bytes become U+FFFD);
`data.decode_errors="replace"` reads anything, lossily. A bad JSON line is reported with its
file and line number.
Local files have no splits: a fixed `val_fraction` of their documents (chosen by a
seed-independent permutation) is held out for validation, unless `data.eval_source` is set.
"""

from __future__ import annotations

import array
import gzip
import hashlib
import io
import json
import os

import numpy as np

from phd_jax import paths
from phd_jax.errors import ConfigError, fail

SOURCE_SPECS = "shakespeare, tfds:NAME[:VERSION], text:GLOB, jsonl:GLOB"
DECODE_ERRORS = ("strict", "replace")  # config.data.decode_errors
# With decode_errors="strict": the largest fraction of a file's bytes that may be undecodable
# (each becomes U+FFFD); above it, or with a NUL byte, the file is not text and is refused.
MAX_UNDECODABLE = 0.01
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "phd_jax", "tensorflow_datasets")


def data_dir(config) -> str:
    """`config.data.data_dir`, or the default under the user's cache."""
    d = config.data.data_dir or DEFAULT_DATA_DIR
    return paths.absolute(d)  # gs://... stays as is


class Documents:
    """A random-access sequence of documents with a fingerprint of what it holds.

    `fingerprint` changes when the documents may have (files, sizes, mtimes, dataset version,
    split): it keys the token cache.
    """

    def __init__(self, name: str, fingerprint: str, length: int, get):
        self.name, self.fingerprint, self._len, self._get = name, fingerprint, length, get

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> str:
        return self._get(int(i))

    def subset(self, indices, name: str) -> Documents:
        indices = np.asarray(indices, np.int64)
        digest = hashlib.sha256(indices.tobytes()).hexdigest()[:12]
        return Documents(name, f"{self.fingerprint}/{digest}", len(indices), lambda i: self._get(int(indices[i])))


def _hash(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _as_text(value, key: str, where: str) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    fail(
        "config.data.text_key",
        key,
        f"{where} holds {type(value).__name__}, not text: name a string (Text) feature",
        ConfigError,
    )


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------


def tfds_documents(
    name: str,
    split: str,
    directory: str,
    text_key: str,
    spec: str,
    split_key: str = "config.data.train_split",
    key: str = "config.data.source",
) -> Documents:
    """The split `split` of the TFDS dataset `name` (`NAME` or `NAME:VERSION`) under `directory`."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=directory)
    except Exception as e:  # noqa: BLE001 - tfds raises DatasetNotFoundError and others
        fail(
            key,
            spec,
            f"no TFDS dataset {name!r} under data_dir={directory} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Prepare it first, "
            f"as array_record: `tfds build {name.split(':')[0]} --data_dir={directory} "
            f"--file_format=array_record`, or set config.data.data_dir",
            ConfigError,
        )
    if not builder.is_prepared():
        fail(
            key,
            spec,
            f"the TFDS dataset {name!r} is not prepared under "
            f"data_dir={directory}: run `tfds build {name.split(':')[0]} --data_dir={directory} "
            f"--file_format=array_record` (or builder.download_and_prepare(file_format="
            f"'array_record')), or set config.data.data_dir",
            ConfigError,
        )
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
    if fmt != "array_record":
        fail(
            key,
            spec,
            f"the TFDS dataset {name!r} under {builder.data_dir} is "
            f"prepared as {fmt}, which has no random access: prepare it again with "
            f"--file_format=array_record (e.g. `tfds build {name.split(':')[0]} --data_dir=DIR "
            f"--file_format=array_record`, or convert with `tfds convert_format`)",
            ConfigError,
        )
    splits = list(builder.info.splits.keys())
    base_split = split.split("[")[0]
    if base_split not in splits:
        fail(
            split_key,
            split,
            f"the TFDS dataset {name!r} has splits {', '.join(splits)} (slices such as 'train[:99%]' work too)",
            ConfigError,
        )
    features = builder.info.features
    if text_key not in features:
        fail(
            "config.data.text_key",
            text_key,
            f"the TFDS dataset {name!r} has features {', '.join(features.keys())}",
            ConfigError,
        )
    source = tfds.data_source(name, split=split, data_dir=directory, download=False)
    fingerprint = _hash("tfds", builder.info.full_name, split, text_key)
    docs = Documents(
        f"{name}[{split}]",
        fingerprint,
        len(source),
        lambda i: _as_text(source[i][text_key], text_key, f"the dataset {name!r}"),
    )
    if len(docs):
        docs[0]  # a feature that is not text fails here, before any work
    return docs


def shakespeare_documents(
    split: str, directory: str, split_key: str = "config.data.train_split", key: str = "config.data.source"
) -> Documents:
    """The embedded corpus, prepared as a TFDS dataset on first use."""
    from phd_jax.data.shakespeare import NAME, VERSION, prepare

    prepare(directory)
    return tfds_documents(f"{NAME}:{VERSION}", split, directory, "text", "shakespeare", split_key, key)


# ---------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------


def _glob(spec: str, pattern: str, key: str) -> list[str]:
    files = paths.glob(pattern)  # local or gs://; `**` at any depth
    if not files:
        where = "in the bucket" if paths.is_remote(pattern) else f"from {os.getcwd()}"
        fail(
            key,
            spec,
            f"the glob {pattern!r} matches no files ({where}); quote it on the command line, "
            f"e.g. --config.data.source='text:docs/*.txt'",
            ConfigError,
        )
    return files


def _files_fingerprint(kind: str, files: list[str], *extra) -> str:
    stats = [(f, *paths.size_and_mtime(f)) for f in files]
    return _hash(kind, stats, *extra)


def decode_text(data: bytes, where: str, key: str, spec: str, decode_errors: str = "strict") -> str:
    """`data` as UTF-8 text. With `decode_errors="strict"`, bytes that are not text (a NUL
    byte, or more than MAX_UNDECODABLE of them undecodable) are a ConfigError naming `where`;
    a few undecodable bytes become U+FFFD. "replace": always U+FFFD, never an error."""
    if decode_errors == "replace":
        return data.decode("utf-8", errors="replace")
    nul = data.find(b"\0")
    if nul >= 0:
        _not_text(where, key, spec, f"a NUL byte at byte {nul}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        first = e.start
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    if bad > MAX_UNDECODABLE * len(data):
        _not_text(where, key, spec, f"{bad} of its {len(data)} bytes are not UTF-8, the first at byte {first}")
    return text


def _not_text(where: str, key: str, spec: str, why: str):
    raise ConfigError(
        f"{key}: {where}: not text ({why}; source {spec!r}): remove it from the glob, or set "
        f"config.data.decode_errors=replace to read it anyway (undecodable bytes become U+FFFD)"
    )


def text_documents(
    spec: str, pattern: str, key: str = "config.data.source", decode_errors: str = "strict"
) -> Documents:
    files = _glob(spec, pattern, key)

    def get(i):
        data = paths.read_bytes(files[i])
        return decode_text(data, files[i], key, spec, decode_errors)

    return Documents(spec, _files_fingerprint("text", files), len(files), get)


def _open(path: str):
    if paths.is_remote(path):
        return (
            gzip.GzipFile(fileobj=io.BytesIO(paths.read_bytes(path)))
            if path.endswith(".gz")
            else paths.open_file(path, "rb")
        )
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def jsonl_documents(
    spec: str, pattern: str, text_key: str, key: str = "config.data.source", decode_errors: str = "strict"
) -> Documents:
    """Every non-empty line of every file: an index of (file, line) kept in memory, lines
    read on demand. The first line is checked for `text_key` up front (a clear error early).
    An error names the file and its own line number (1-based)."""
    files = _glob(spec, pattern, key)
    lines: list[bytes] = []
    file_of, line_of = array.array("l"), array.array("q")  # each line's file and 1-based number
    for n, path in enumerate(files):
        with _open(path) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    lines.append(line)
                    file_of.append(n)
                    line_of.append(number)
    if not lines:
        fail(key, spec, f"the files {pattern!r} hold no JSON lines", ConfigError)

    def line_name(i):
        return f"{files[file_of[i]]} line {line_of[i]}"

    def get(i):
        try:
            text = decode_text(lines[i], line_name(i), key, spec, decode_errors)
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{key}: {line_name(i)}: not valid JSON ({e})") from None
        if not isinstance(record, dict) or text_key not in record:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise ConfigError(
                f"config.data.text_key={text_key!r} is invalid: {line_name(i)} has no {text_key!r} "
                f"(its keys: {keys or 'none'})"
            )
        return _as_text(record[text_key], text_key, line_name(i))

    get(0)
    return Documents(spec, _files_fingerprint("jsonl", files, text_key), len(lines), get)


# The fixed seed of the validation split: the same documents are held out whatever config.seed is.
HELD_OUT_SEED = 0x5EED


def held_out(n: int, val_fraction: float) -> np.ndarray:
    """Which of `n` documents are validation documents: a fixed (seed-independent) choice of
    `ceil(val_fraction * n)` of them, at least one, never all."""
    k = min(max(1, int(np.ceil(val_fraction * n))), n - 1)
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(HELD_OUT_SEED).permutation(n)[:k]] = True
    return chosen


# ---------------------------------------------------------------------------
# The config's view
# ---------------------------------------------------------------------------


def parse_source(spec, key: str = "config.data.source") -> tuple[str, str]:
    """`(kind, argument)` of a source spec; a ConfigError if it is none of SOURCE_SPECS."""
    if isinstance(spec, str):
        if spec == "shakespeare":
            return "shakespeare", ""
        kind, _, arg = spec.partition(":")
        if kind in ("tfds", "text", "jsonl") and arg:
            return kind, arg
    fail(key, spec, f"allowed: {SOURCE_SPECS}", ConfigError)


def documents(config, spec: str, role: str) -> Documents:
    """The documents of source `spec` for `role`: `train`, `eval` (held-out part of the same
    source) or `eval_source` (a separate evaluation source: its eval split, or all its files).
    Local files keep every document for training when `data.eval_source` is set."""
    key = "config.data.eval_source" if role == "eval_source" else "config.data.source"
    kind, arg = parse_source(spec, key)
    d = config.data
    split_key = "config.data.train_split" if role == "train" else "config.data.eval_split"
    split = d.train_split if role == "train" else d.eval_split
    if kind == "shakespeare":
        return shakespeare_documents(split, data_dir(config), split_key, key)
    if kind == "tfds":
        return tfds_documents(arg, split, data_dir(config), d.text_key, spec, split_key, key)
    decode_errors = d.get("decode_errors", "strict")
    if kind == "text":
        docs = text_documents(spec, arg, key, decode_errors)
    else:
        docs = jsonl_documents(spec, arg, d.text_key, key, decode_errors)
    if role == "eval_source" or (role == "train" and d.eval_source):
        return docs  # a separate evaluation source: nothing to hold out
    if len(docs) < 2:
        fail(
            key,
            spec,
            "holds a single document, so none can be held out for "
            "validation: add documents or set config.data.eval_source",
            ConfigError,
        )
    is_val = held_out(len(docs), config.val_fraction)
    return docs.subset(np.flatnonzero(is_val if role == "eval" else ~is_val), f"{spec}[{role}]")
