"""Input data: tokenizers, document sources (the embedded Shakespeare TFDS dataset, TFDS
`array_record` datasets, text and JSONL files), packing into windows, the grain pipeline.
`pipeline` holds the contract the trainer uses."""

from phd_jax.data.packing import TokenStream, token_stream
from phd_jax.data.pipeline import BatchIterator, Pipeline, default_data_config, make_pipeline, validate_data_config
from phd_jax.data.sources import Documents, documents
from phd_jax.data.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    check_vocab_size,
    make_tokenizer,
    padded_vocab_size,
)

__all__ = [
    "BatchIterator",
    "ByteTokenizer",
    "Documents",
    "HFTokenizer",
    "Pipeline",
    "SentencePieceTokenizer",
    "TokenStream",
    "check_vocab_size",
    "default_data_config",
    "documents",
    "make_pipeline",
    "make_tokenizer",
    "padded_vocab_size",
    "token_stream",
    "validate_data_config",
]
