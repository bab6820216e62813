"""Input data: tokenizers, sources, the packed and sharded pipeline (see `pipeline` for the contract)."""
from phd_jax.data.corpus import batch_at, decode, encode, shakespeare_bytes, split
from phd_jax.data.pipeline import BatchIterator, Pipeline, make_pipeline
from phd_jax.data.tokenizers import ByteTokenizer, make_tokenizer

__all__ = ["BatchIterator", "ByteTokenizer", "Pipeline", "batch_at", "decode", "encode",
           "make_pipeline", "make_tokenizer", "shakespeare_bytes", "split"]
