"""Input data: tokenizers, document sources (the embedded Shakespeare TFDS dataset, TFDS
`array_record` datasets, text and JSONL files), packing into windows, the grain pipeline.
`pipeline` holds the contract the trainer uses."""
from phd_jax.data.corpus import batch_at, decode, encode, shakespeare_bytes, split
from phd_jax.data.packing import TokenStream, token_stream
from phd_jax.data.pipeline import (BatchIterator, Pipeline, default_data_config, make_pipeline,
                                   validate_data_config)
from phd_jax.data.sources import Documents, documents
from phd_jax.data.tokenizers import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer,
                                     check_vocab_size, make_tokenizer, padded_vocab_size)

__all__ = ["BatchIterator", "ByteTokenizer", "Documents", "HFTokenizer", "Pipeline",
           "SentencePieceTokenizer", "TokenStream", "batch_at", "check_vocab_size", "decode",
           "default_data_config", "documents", "encode", "make_pipeline", "make_tokenizer",
           "padded_vocab_size", "shakespeare_bytes", "split", "token_stream", "validate_data_config"]
