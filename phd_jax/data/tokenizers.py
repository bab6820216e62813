"""Tokenizers: one small interface (`encode`, `decode`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`).

INTERIM (contract for issue 7): only `byte` exists yet; `sentencepiece:PATH` and `hf:PATH`
come with the data issue, behind the same interface and `make_tokenizer`.
"""
from __future__ import annotations

import dataclasses


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
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def make_tokenizer(spec: str):
    """`byte` | `sentencepiece:PATH` | `hf:PATH` (the config's `data.tokenizer`)."""
    if spec == "byte":
        return ByteTokenizer()
    raise ValueError(f"config.data.tokenizer={spec!r} is invalid: allowed: byte, sentencepiece:PATH, hf:PATH")
