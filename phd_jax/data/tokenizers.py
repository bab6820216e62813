"""Tokenizers behind one small interface: `encode(str) -> list[int]`, `decode(ids) -> str`,
`vocab_size`, `bos_id`, `eos_id`, `pad_id` (and `name`, a stable description for caches).

`config.data.tokenizer` picks one (`make_tokenizer`):
- `byte` (default, no file): UTF-8 bytes 0..255, then BOS, EOS, PAD = 256, 257, 258;
- `sentencepiece:PATH`: a SentencePiece `.model` file;
- `hf:PATH`: a Hugging Face `tokenizer.json` (the `tokenizers` package; no network).

`encode` never adds BOS/EOS: the pipeline puts an EOS after every document itself.
A tokenizer without a PAD token pads with EOS; one without BOS uses EOS as BOS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from phd_jax import paths
from phd_jax.errors import ConfigError, fail

TOKENIZER_SPECS = "byte, sentencepiece:PATH (a .model file), hf:PATH (a tokenizer.json)"
NUM_BYTES = 256  # the byte tokenizer's ids 0..255 (BOS, EOS, PAD follow)
# A run config's vocab_size 0: the tokenizer's ids padded to a multiple of this (fast matmuls).
VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes 0..255, then BOS, EOS, PAD (ids 256, 257, 258). Decoding replaces invalid bytes."""

    vocab_size: int = 259
    bos_id: int = 256
    eos_id: int = 257
    pad_id: int = 258
    name: str = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < NUM_BYTES).decode("utf-8", errors="replace")


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class SentencePieceTokenizer:
    """A SentencePiece `.model` file."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self.path = path
        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises OSError/RuntimeError variously
            fail(
                "config.data.tokenizer",
                f"sentencepiece:{path}",
                f"not a readable SentencePiece model ({type(e).__name__}: {e})",
                ConfigError,
            )
        self.vocab_size = int(self._sp.get_piece_size())
        eos = int(self._sp.eos_id())
        if eos < 0:
            fail(
                "config.data.tokenizer",
                f"sentencepiece:{path}",
                "the model has no EOS piece (train it with eos_id >= 0): documents are separated by EOS",
                ConfigError,
            )
        self.eos_id = eos
        self.bos_id = int(self._sp.bos_id()) if self._sp.bos_id() >= 0 else eos
        self.pad_id = int(self._sp.pad_id()) if self._sp.pad_id() >= 0 else eos
        self.name = f"sentencepiece:{_file_digest(path)}"

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])


# Names under which tokenizer.json files spell their special tokens, most specific first.
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "[CLS]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")


class HFTokenizer:
    """A Hugging Face `tokenizer.json`. Special tokens come from a `tokenizer_config.json` beside
    it when there is one (`eos_token`, `bos_token`, `pad_token`), else from their usual names."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.path = path
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            fail(
                "config.data.tokenizer",
                f"hf:{self.path}",
                f"not a readable tokenizer.json ({type(e).__name__}: {e})",
                ConfigError,
            )
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        named = _special_tokens(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
        self.eos_id = self._find(named.get("eos_token"), _EOS_NAMES)
        if self.eos_id is None:
            fail(
                "config.data.tokenizer",
                f"hf:{self.path}",
                f"no EOS token found (looked for eos_token in tokenizer_config.json and for "
                f"{', '.join(_EOS_NAMES)}): documents are separated by EOS",
                ConfigError,
            )
        bos = self._find(named.get("bos_token"), _BOS_NAMES)
        pad = self._find(named.get("pad_token"), _PAD_NAMES)
        self.bos_id = self.eos_id if bos is None else bos
        self.pad_id = self.eos_id if pad is None else pad
        self.name = f"hf:{_file_digest(path)}"

    def _find(self, configured, names):
        for token in ((configured,) if configured else ()) + names:
            i = self._tok.token_to_id(token)
            if i is not None:
                return int(i)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size], skip_special_tokens=False)


def _special_tokens(config_path: str) -> dict:
    if not os.path.exists(config_path):
        return {}
    with open(config_path, encoding="utf-8") as f:
        settings = json.load(f)
    out = {}
    for key in ("eos_token", "bos_token", "pad_token"):
        value = settings.get(key)
        if isinstance(value, dict):  # {"content": "</s>", ...}
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def make_tokenizer(spec: str):
    """`byte` | `sentencepiece:PATH` | `hf:PATH` (the config's `data.tokenizer`)."""
    if not isinstance(spec, str):
        fail("config.data.tokenizer", spec, f"allowed: {TOKENIZER_SPECS}", ConfigError)
    if spec == "byte":
        return ByteTokenizer()
    kind, _, path = spec.partition(":")
    if kind in ("sentencepiece", "hf") and path:
        path = path if paths.is_remote(path) else os.path.expanduser(path)
        if not paths.exists(path):
            fail("config.data.tokenizer", spec, f"{path} does not exist (allowed: {TOKENIZER_SPECS})", ConfigError)
        # gs://: the libraries read local files; a staged copy, read whole before it is removed
        with paths.staged(path, names=("tokenizer.json", "tokenizer_config.json")) as local:
            return SentencePieceTokenizer(local) if kind == "sentencepiece" else HFTokenizer(local)
    fail("config.data.tokenizer", spec, f"allowed: {TOKENIZER_SPECS}", ConfigError)


def num_ids(tokenizer) -> int:
    """How many ids a model must embed for `tokenizer` (its vocabulary and BOS/EOS/PAD)."""
    return max(tokenizer.vocab_size, tokenizer.bos_id + 1, tokenizer.eos_id + 1, tokenizer.pad_id + 1)


def check_vocab_size(vocab_size: int, tokenizer, name: str = "config.model.vocab_size") -> None:
    """The model must embed every id the tokenizer produces (including BOS/EOS/PAD)."""
    needed = num_ids(tokenizer)
    if vocab_size < needed:
        fail(
            name,
            vocab_size,
            f"the tokenizer {tokenizer.name} has {needed} ids, more than the "
            f"model can embed: use vocab_size >= {needed} (or 0 to take the tokenizer's, padded "
            f"to a multiple of {VOCAB_MULTIPLE})",
            ConfigError,
        )


def padded_vocab_size(tokenizer, multiple: int = VOCAB_MULTIPLE) -> int:
    """The tokenizer's vocabulary rounded up to a multiple of `multiple` (fast matmuls)."""
    return -(-num_ids(tokenizer) // multiple) * multiple
