"""Documents -> tokens -> one EOS-separated token stream, cut into `[seq_len + 1]` windows.

The stream is tokenized once per (documents, tokenizer) and cached on disk (a flat token file
plus document end offsets, memory-mapped), like Levanter's token cache: after that every
window is a slice, so any window can be read at any time by any process. That is what makes
the data position a plain global window index, and resume exact on any number of processes.

Windows do not overlap and need no padding (the GPT/OLMo packing): window `i` holds stream
tokens `[i*L, (i+1)*L)`, `L = seq_len + 1`; the stream's last `< L` tokens are dropped.
A document's EOS belongs to that document (its segment).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

CACHE_FORMAT = 1

# Corpora of fewer documents tokenize without a progress bar (it would only flash).
PROGRESS_MIN_DOCS = 1000


class TokenStream:
    """`tokens` (1-D, memory-mapped) and `doc_ends` (exclusive end of each document, its EOS
    included) of a packed stream."""

    def __init__(self, tokens: np.ndarray, doc_ends: np.ndarray, fingerprint: str, name: str = ""):
        self.tokens, self.doc_ends, self.fingerprint, self.name = tokens, doc_ends, fingerprint, name

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.doc_ends)

    def num_windows(self, length: int) -> int:
        return self.num_tokens // length

    def window(self, i: int, length: int) -> np.ndarray:
        return np.asarray(self.tokens[i * length : (i + 1) * length], np.int32)

    def segment_ids(self, i: int, length: int) -> np.ndarray:
        """Document of each token of window `i`, numbered from 0 within the window."""
        docs = np.searchsorted(self.doc_ends, np.arange(i * length, (i + 1) * length), side="right")
        return (docs - docs[0]).astype(np.int32)

    def document(self, d: int) -> np.ndarray:
        """Tokens of document `d` (its EOS included)."""
        start = 0 if d == 0 else int(self.doc_ends[d - 1])
        return np.asarray(self.tokens[start : int(self.doc_ends[d])], np.int32)


def _key(docs, tokenizer) -> str:
    parts = (CACHE_FORMAT, docs.fingerprint, tokenizer.name, tokenizer.eos_id, tokenizer.vocab_size)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _open(path: str, fingerprint: str, name: str) -> TokenStream:
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    tokens = (
        np.memmap(os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))
        if meta["num_tokens"]
        else np.zeros(0, np.int32)
    )
    return TokenStream(tokens, np.load(os.path.join(path, "doc_ends.npy")), fingerprint, name)


def token_stream(docs, tokenizer, cache_dir: str, num_threads: int = 1, progress: bool = True) -> TokenStream:
    """The packed stream of `docs` (a `sources.Documents`), from the cache or tokenized now.

    Tokenization runs through grain (`num_threads` reader threads, documents in order); the
    result is written to a temporary directory and renamed into place, so a crash leaves no
    half-written cache and processes that build the same cache at once do not collide.
    """
    import grain

    key = _key(docs, tokenizer)
    path = os.path.join(cache_dir, key)
    if os.path.exists(os.path.join(path, "meta.json")):
        return _open(path, key, docs.name)
    os.makedirs(cache_dir, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    eos = tokenizer.eos_id

    def encode(text):
        return np.asarray(tokenizer.encode(text) + [eos], dtype)

    tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir)
    try:
        ends, total = [], 0
        ds = (
            grain.MapDataset.source(docs)
            .map(encode)
            .to_iter_dataset(
                grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=4 * max(1, num_threads))
            )
        )
        from tqdm.auto import tqdm

        with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
            for ids in tqdm(
                ds,
                total=len(docs),
                desc=f"tokenizing {docs.name}",
                unit="doc",
                disable=not progress or len(docs) < PROGRESS_MIN_DOCS,
                leave=False,
            ):
                f.write(ids.tobytes())
                total += len(ids)
                ends.append(total)
        np.save(os.path.join(tmp, "doc_ends.npy"), np.asarray(ends, np.int64))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(
                {
                    "dtype": np.dtype(dtype).name,
                    "num_tokens": total,
                    "num_documents": len(ends),
                    "documents": docs.name,
                    "tokenizer": tokenizer.name,
                },
                f,
            )
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same cache first: use that one
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _open(path, key, docs.name)
