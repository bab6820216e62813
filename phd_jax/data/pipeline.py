"""The training / validation input pipeline (grain), and its config section `config.data`.

    pipe = make_pipeline(config, process_index=jax.process_index(), process_count=jax.process_count())
    pipe.tokenizer                      # encode / decode / vocab_size / bos_id / eos_id / pad_id
    it = pipe.train_iterator()          # next(it) -> batch dict (this process's rows only)
    it.data_time                        # seconds the last next(it) waited for data
    state = it.get_state(); it.set_state(state)   # JSON-able, identical on every process
    pipe.eval_batches()                 # fixed list of batch dicts (this process's rows)

A batch dict holds `tokens`: int32 `[local_batch, seq_len + 1]` (inputs are `[:, :-1]`,
targets `[:, 1:]`), and with `config.data.document_masking` also `segment_ids` of the same
shape (the document of each token, numbered from 0 within its row; pass `segment_ids[:, :-1]`
to `forward`). `local_batch = config.batch_size // process_count`.

How: documents -> tokens -> one EOS-separated stream, cached on disk (`packing`) -> windows of
`seq_len + 1` tokens -> an infinite sequence of windows, each epoch a different permutation
(grain's index shuffle, by `config.seed`) -> global batch `b` = samples `[b*B, (b+1)*B)` ->
process `p` reads rows `[p*B/P, (p+1)*B/P)` of each -> grain reader threads prefetch batches.
Every step is a pure function of the global position (windows consumed), so the iterator
state is that number, and a restore on another number of processes or devices continues with
exactly the next windows. Evaluation reads the held-out split (or `data.eval_source`) in
order, unshuffled: the same windows for every run and variant.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from ml_collections import ConfigDict

from phd_jax.data.packing import TokenStream, token_stream
from phd_jax.data.sources import DECODE_ERRORS, documents, parse_source
from phd_jax.data.tokenizers import check_vocab_size, make_tokenizer
from phd_jax.errors import ConfigError, as_bool, as_float, as_int, fail, one_of

log = logging.getLogger(__name__)


def default_data_config() -> ConfigDict:
    """`config.data`: where documents come from, how they become token windows."""
    return ConfigDict(
        {
            "source": "shakespeare",  # shakespeare | tfds:NAME[:VERSION] | text:GLOB | jsonl:GLOB
            "tokenizer": "byte",  # byte | sentencepiece:PATH | hf:PATH (a tokenizer.json)
            "data_dir": "",  # TFDS data_dir; "" = ~/.cache/phd_jax/tensorflow_datasets
            "text_key": "text",  # the text feature (TFDS) or field (JSONL)
            "train_split": "train",  # TFDS split (slices like train[:99%] work)
            "eval_split": "validation",  # TFDS split held out for validation
            "eval_source": "",  # a separate validation source ("" = the held-out part of `source`)
            "decode_errors": "strict",  # local files: strict (refuse files that are not text) | replace
            "document_masking": False,  # attention never crosses a document boundary (segment_ids)
            "shuffle": True,  # a new permutation of the windows every epoch, by config.seed
            "cache_dir": "",  # local token cache; "" = ~/.cache/phd_jax/token_cache
            "num_threads": 2,  # grain reader threads (tokenizing, reading batches)
            "prefetch": 4,  # batches read ahead of the training step
        }
    )


# Keys newer than a run's saved config.json may be: absent means their default.
_ADDED_KEYS = {"decode_errors": "strict"}
_TOP_LEVEL = ("seq_len", "batch_size", "seed", "eval_batches", "val_fraction")


def validate_data_config(config, process_count: int = 1):
    """Check `config.data` and the top-level keys the pipeline reads; a ConfigError names the key.

    Loads the tokenizer (cheap) so a bad tokenizer path fails before any work; with a non-zero
    `config.model.vocab_size`, also checks that the model embeds every tokenizer id. Returns
    the tokenizer.
    """
    for key in _TOP_LEVEL:
        if key not in config:
            fail(f"config.{key}", None, "must be set (the data pipeline reads it)", ConfigError)
    as_int("config.seq_len", config.seq_len, 1, error=ConfigError)
    batch = as_int("config.batch_size", config.batch_size, 1, error=ConfigError)
    as_int("config.seed", config.seed, error=ConfigError)
    as_int("config.eval_batches", config.eval_batches, 0, error=ConfigError)
    as_float("config.val_fraction", config.val_fraction, 0.0, 1.0, low_open=True, high_open=True, error=ConfigError)
    if batch % process_count:
        fail(
            "config.batch_size",
            batch,
            f"must be a multiple of the number of processes "
            f"({process_count}): each process reads an equal slice of every global batch",
            ConfigError,
        )
    if "data" not in config:
        fail("config.data", None, "must be set: use phd_jax.data.default_data_config()", ConfigError)
    d, defaults = config.data, default_data_config()
    unknown = sorted(set(d.keys()) - set(defaults.keys()))
    if unknown:
        fail(
            f"config.data.{unknown[0]}",
            d[unknown[0]],
            f"not a data setting (a typo?); known: {', '.join(defaults.keys())}",
            ConfigError,
        )
    missing = sorted(set(defaults.keys()) - set(d.keys()) - set(_ADDED_KEYS))
    if missing:
        fail(
            f"config.data.{missing[0]}", None, "must be set: start from phd_jax.data.default_data_config()", ConfigError
        )
    for key in ("source", "tokenizer", "data_dir", "text_key", "train_split", "eval_split", "eval_source", "cache_dir"):
        if not isinstance(d[key], str):
            fail(f"config.data.{key}", d[key], f"must be a string (got {type(d[key]).__name__})", ConfigError)
    parse_source(d.source)
    if d.eval_source:
        parse_source(d.eval_source, "config.data.eval_source")
    if not d.text_key:
        fail("config.data.text_key", d.text_key, "must name the text feature or field", ConfigError)
    decode_errors = d.get("decode_errors", _ADDED_KEYS["decode_errors"])
    one_of("config.data.decode_errors", decode_errors, DECODE_ERRORS, error=ConfigError)
    for key in ("document_masking", "shuffle"):
        as_bool(f"config.data.{key}", d[key], error=ConfigError)
    as_int("config.data.num_threads", d.num_threads, 1, error=ConfigError)
    as_int("config.data.prefetch", d.prefetch, 0, error=ConfigError)
    tokenizer = make_tokenizer(d.tokenizer)
    model = config.get("model", None)
    if model is not None and model.get("vocab_size", 0):
        check_vocab_size(model.vocab_size, tokenizer)
    return tokenizer


DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "phd_jax", "token_cache")


def cache_dir(config) -> str:
    """Where token caches live: a local directory (memory-mapped), on every host."""
    return os.path.abspath(os.path.expanduser(config.data.cache_dir or DEFAULT_CACHE_DIR))


class BatchIterator:
    """This process's rows of global batches `position/B, position/B + 1, ...`, prefetched."""

    def __init__(self, pipeline: Pipeline, position: int = 0):
        self._pipe = pipeline
        self.data_time = 0.0  # seconds the last `next` waited
        self.total_data_time = 0.0
        self._start(position)

    def _start(self, position: int):
        self._position = position
        self._iter = iter(self._pipe._train_batches(position))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        t = time.perf_counter()
        batch = next(self._iter)
        self.data_time = time.perf_counter() - t
        self.total_data_time += self.data_time
        self._position += self._pipe.batch_size
        return batch

    @property
    def position(self) -> int:
        """Global windows consumed so far (all processes together)."""
        return self._position

    @property
    def epoch(self) -> float:
        return self._position / self._pipe.windows_per_epoch

    def get_state(self) -> dict:
        """JSON-able, the same on every process: the global position and what it refers to."""
        p = self._pipe
        return {"position": self._position, "seed": p.seed, "seq_len": p.seq_len, "data": p.train_stream.fingerprint}

    def set_state(self, state: dict) -> None:
        """Continue at `state["position"]` (also accepts the interim `{"step": n}`)."""
        p = self._pipe
        if "position" in state:
            position = as_int("data iterator state position", state["position"], 0)
        else:
            position = as_int("data iterator state step", state.get("step"), 0) * p.batch_size
        for key, now in (("seed", p.seed), ("seq_len", p.seq_len), ("data", p.train_stream.fingerprint)):
            if key in state and state[key] != now:
                log.warning(
                    "data iterator restored with %s=%r, saved with %r: the order of the "
                    "windows after position %d differs from the saved run's",
                    key,
                    now,
                    state[key],
                    position,
                )
        self._start(position)


class _Windows:
    """Random access to the packed windows of a token stream (a grain data source)."""

    def __init__(self, stream: TokenStream, length: int, segments: bool):
        self.stream, self.length, self.segments = stream, length, segments
        self._n = stream.num_windows(length)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        i = int(i) % self._n
        out = {"tokens": self.stream.window(i, self.length)}
        if self.segments:
            out["segment_ids"] = self.stream.segment_ids(i, self.length)
        return out


def _process_rows(samples, start: int, global_batch: int, process_index: int, process_count: int):
    """This process's samples, in order: row r of global batch b is sample
    `start + b*B + p*B/P + r` of the global sequence `samples`."""
    import grain

    local = global_batch // process_count

    class ProcessRows(grain.MapDataset):
        def __init__(self):
            super().__init__(samples)

        def __len__(self):
            return 2**62

        def __str__(self):
            return f"ProcessRows(process {process_index} of {process_count})"

        def __getitem__(self, i):
            if isinstance(i, slice):
                return self.slice(i)
            b, r = divmod(int(i), local)
            return self._parent[start + b * global_batch + process_index * local + r]

    return ProcessRows()


class Pipeline:
    """Tokenizer, the packed training stream and the fixed validation batches of a run config."""

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        self.tokenizer = validate_data_config(config, process_count)
        if not 0 <= process_index < process_count:
            fail("process_index", process_index, f"must be in [0, {process_count})")
        self.config = config
        d = config.data
        self.seq_len, self.batch_size, self.seed = int(config.seq_len), int(config.batch_size), int(config.seed)
        self.length = self.seq_len + 1
        self.eval_count = int(config.eval_batches)
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = self.batch_size // process_count
        self.document_masking = bool(d.document_masking)
        self.train_stream = self._stream(documents(config, d.source, "train"), "source")
        self.windows_per_epoch = self.train_stream.num_windows(self.length)
        if d.eval_source:
            docs, key = documents(config, d.eval_source, "eval_source"), "eval_source"
        else:
            docs, key = documents(config, d.source, "eval"), "source"
        self.eval_stream = self._stream(docs, key)  # now, so that a bad eval split fails early

    def _stream(self, docs, key: str) -> TokenStream:
        stream = token_stream(docs, self.tokenizer, cache_dir(self.config), self.config.data.num_threads)
        if stream.num_windows(self.length) < 1:
            fail(
                f"config.data.{key}",
                getattr(self.config.data, key) or self.config.data.source,
                f"{docs.name} holds {stream.num_tokens} tokens ({stream.num_documents} documents), "
                f"fewer than one window of seq_len + 1 = {self.length}",
                ConfigError,
            )
        return stream

    def samples(self):
        """The infinite global sequence of training windows (a grain `MapDataset`): epoch `e`
        is sample range `[e*W, (e+1)*W)`, a permutation of the W windows (by `config.seed`)."""
        import grain

        samples = grain.MapDataset.source(_Windows(self.train_stream, self.length, self.document_masking))
        if self.config.data.shuffle:
            # grain seeds epoch e with seed + e: spread the run seeds apart so that run seed s + 1
            # does not replay the epochs of run seed s one epoch early.
            seed = int(np.random.SeedSequence(self.seed % 2**63).generate_state(1)[0])
            samples = samples.shuffle(seed=seed)
        return samples.repeat()  # a new permutation every epoch

    def _train_batches(self, position: int):
        import grain

        d = self.config.data
        rows = _process_rows(self.samples(), position, self.batch_size, self.process_index, self.process_count)
        batches = rows.batch(self.local_batch, drop_remainder=True)
        return batches.to_iter_dataset(
            grain.ReadOptions(num_threads=int(d.num_threads), prefetch_buffer_size=int(d.prefetch))
        )

    def train_iterator(self) -> BatchIterator:
        return BatchIterator(self)

    def eval_batches(self) -> list[dict]:
        """`config.eval_batches` fixed batches of held-out windows in order (this process's rows).

        If the held-out data has fewer windows than that, as many batches as cover it once (the
        last one filled cyclically from the start)."""
        windows = _Windows(self.eval_stream, self.length, self.document_masking)
        count = min(self.eval_count, -(-len(windows) // self.batch_size))
        if count < self.eval_count:
            log.warning(
                "validation data has %d windows of %d tokens: %d eval batches instead of %d",
                len(windows),
                self.length,
                count,
                self.eval_count,
            )
        out = []
        for b in range(count):
            first = b * self.batch_size + self.process_index * self.local_batch
            items = [windows[first + r] for r in range(self.local_batch)]
            out.append({k: np.stack([it[k] for it in items]) for k in items[0]})
        return out

    def stats(self) -> dict:
        """Sizes of the training and validation streams (documents, tokens, windows)."""
        t, e = self.train_stream, self.eval_stream
        return {
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.tokenizer.vocab_size,
            "train_documents": t.num_documents,
            "train_tokens": t.num_tokens,
            "train_windows": t.num_windows(self.length),
            "eval_documents": e.num_documents,
            "eval_tokens": e.num_tokens,
            "eval_windows": e.num_windows(self.length),
        }


def make_pipeline(config, process_index: int = 0, process_count: int = 1) -> Pipeline:
    return Pipeline(config, process_index, process_count)
