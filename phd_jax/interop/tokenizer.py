"""The tokenizer of a Hugging Face checkpoint (`tokenizer.json`), behind the project's small interface.

`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`
(the same as `phd_jax.data.tokenizers.ByteTokenizer`). Special ids come from
`tokenizer_config.json` / `config.json` / `generation_config.json` when present.
"""
from __future__ import annotations

import json
import os

from phd_jax.checks import ConfigError


class HFTokenizer:
    """A `tokenizers.Tokenizer` from `tokenizer.json`; `encode` adds no special tokens."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        path = os.fspath(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer file {file} does not exist (a Hugging Face checkpoint "
                                    "keeps its tokenizer in tokenizer.json)")
        try:
            self._tok = Tokenizer.from_file(file)
        except Exception as e:   # tokenizers raises a bare Exception on a malformed file
            raise ConfigError(f"{file} is not a valid tokenizer.json ({e})") from None
        self.name = f"hf:{path}"
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        folder = os.path.dirname(file)
        meta = {}
        for fname in ("config.json", "generation_config.json", "tokenizer_config.json"):
            full = os.path.join(folder, fname)
            if os.path.isfile(full):
                with open(full) as f:
                    meta.update({k: v for k, v in json.load(f).items() if v is not None})
        self.bos_id = self._special(meta, "bos")
        self.eos_id = self._special(meta, "eos")
        pad = self._special(meta, "pad")
        self.pad_id = self.eos_id if pad is None else pad

    def _special(self, meta: dict, kind: str):
        """`<kind>_token_id`, else the id of `<kind>_token` (a string or {"content": ...})."""
        tid = meta.get(f"{kind}_token_id")
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if isinstance(tid, int):
            return tid
        tok = meta.get(f"{kind}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        return self._tok.token_to_id(tok) if isinstance(tok, str) else None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_hf_tokenizer(path: str) -> HFTokenizer:
    """The tokenizer of a local HF checkpoint directory (or a `tokenizer.json` file)."""
    return HFTokenizer(path)
