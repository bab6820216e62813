"""The training / validation input pipeline.

INTERIM (contract for issues 6 and 7): byte windows of the Shakespeare corpus drawn by
`corpus.batch_at`. The data issue replaces the internals (grain, TFDS sources, packing,
document masking) and keeps this interface, which the trainer and eval code use:

    pipe = make_pipeline(config, process_index=jax.process_index(), process_count=jax.process_count())
    pipe.tokenizer                      # phd_jax.data.Tokenizer
    it = pipe.train_iterator()          # next(it) -> batch dict (this process's rows only)
    state = it.get_state(); it.set_state(state)   # JSON-able, identical on every process
    pipe.eval_batches()                 # fixed list of batch dicts (this process's rows)

A batch dict holds `tokens`: int32 `[local_batch, seq_len + 1]` (inputs are `[:, :-1]`,
targets `[:, 1:]`), and with `config.data.document_masking` also `segment_ids` of the same
shape. `local_batch = config.batch_size // process_count`. The iterator state is the global
position (the number of global batches consumed), so a restore on another number of
processes or devices continues with exactly the next global batch.
"""
from __future__ import annotations

import numpy as np

from phd_jax.data import corpus
from phd_jax.data.tokenizers import make_tokenizer


class BatchIterator:
    def __init__(self, pipeline: "Pipeline", step: int = 0):
        self._pipe, self._step = pipeline, step

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self._step += 1
        return self._pipe._batch(self._pipe._train, self._step, self._pipe.seed)

    def get_state(self) -> dict:
        return {"step": self._step}

    def set_state(self, state: dict) -> None:
        self._step = int(state["step"])


class Pipeline:
    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        self.tokenizer = make_tokenizer(config.get("data", {}).get("tokenizer", "byte")
                                        if "data" in config else "byte")
        self.seq_len, self.batch_size, self.seed = config.seq_len, config.batch_size, config.seed
        self.eval_count = config.eval_batches
        self.process_index, self.process_count = process_index, process_count
        self._train, self._val = corpus.split(corpus.shakespeare_bytes(), config.get("val_fraction", 0.05))

    def _batch(self, data, step, seed) -> dict:
        rows = corpus.batch_at(data, step, self.batch_size, self.seq_len, seed)
        per = self.batch_size // self.process_count
        return {"tokens": rows[self.process_index * per:(self.process_index + 1) * per]}

    def train_iterator(self) -> BatchIterator:
        return BatchIterator(self)

    def eval_batches(self) -> list[dict]:
        return [self._batch(self._val, i, 10_000) for i in range(self.eval_count)]


def make_pipeline(config, process_index: int = 0, process_count: int = 1) -> Pipeline:
    return Pipeline(config, process_index, process_count)
