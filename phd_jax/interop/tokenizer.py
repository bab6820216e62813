"""The tokenizer of a Hugging Face checkpoint: `phd_jax.data.HFTokenizer` (one implementation for
training data and for evaluation), found from the checkpoint directory."""

from __future__ import annotations

import os


def load_hf_tokenizer(path: str):
    """The `tokenizer.json` of a local HF checkpoint directory (or the file itself), behind the
    project's interface (`encode`, `decode`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`)."""
    from phd_jax import paths
    from phd_jax.data.tokenizers import HFTokenizer

    path = os.fspath(path)
    if paths.is_remote(path):  # gs://...: the tokenizers library reads a local file
        with paths.staged(path, names=("tokenizer.json", "tokenizer_config.json")) as local:
            return load_hf_tokenizer(local)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"tokenizer file {file} does not exist (a Hugging Face checkpoint keeps its tokenizer in tokenizer.json)"
        )
    return HFTokenizer(path)
