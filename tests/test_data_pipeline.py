"""The grain pipeline: packing (every token once per epoch, in order, EOS between documents),
determinism, 1/2/4 simulated processes, exact resume, fixed eval batches, config errors."""

import json
import os

import numpy as np
import pytest
from data_helpers import random_documents, run_config, write_text_corpus

from phd_jax.data import make_pipeline, make_tokenizer, shakespeare, validate_data_config
from phd_jax.data.sources import held_out
from phd_jax.errors import ConfigError

EOS = 257


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 small documents as text files (some empty, some longer than a window)."""
    docs = random_documents(40, seed=7)
    return docs, "text:" + write_text_corpus(tmp_path_factory.mktemp("corpus"), docs)


def _windows(pipe):
    return [tuple(pipe.train_stream.window(i, pipe.length)) for i in range(pipe.windows_per_epoch)]


def _rows(pipe, steps, start=None):
    it = pipe.train_iterator()
    if start is not None:
        it.set_state(start)
    return [next(it) for _ in range(steps)]


def test_packing_every_token_once_per_epoch_in_order(data_root, corpus):
    docs, source = corpus
    pipe = make_pipeline(run_config(data_root, source=source, seq_len=15, batch_size=4, document_masking=True))
    train_docs = [d for d, v in zip(docs, held_out(len(docs), 0.2)) if not v]
    stream = [t for d in train_docs for t in list(d.encode()) + [EOS]]  # EOS after every document
    w, L = pipe.windows_per_epoch, pipe.length
    assert w == len(stream) // L
    assert [t for win in _windows(pipe) for t in win] == stream[: w * L]  # windows in order = the stream

    steps = -(-2 * w // 4)  # two epochs of global batches
    batches = _rows(pipe, steps)
    rows = [tuple(r) for b in batches for r in b["tokens"]]
    epoch0, epoch1 = rows[:w], rows[w : 2 * w]
    assert sorted(epoch0) == sorted(_windows(pipe)) == sorted(epoch1)  # each window exactly once
    assert epoch0 != epoch1  # reshuffled every epoch
    assert epoch0 != _windows(pipe)  # shuffled at all
    for b in batches:  # a new document starts right after each EOS
        assert b["tokens"].dtype == np.int32 and b["tokens"].shape == (4, 16) == b["segment_ids"].shape
        new_doc = np.diff(b["segment_ids"], axis=1) != 0
        np.testing.assert_array_equal(new_doc, b["tokens"][:, :-1] == EOS)
        assert (b["segment_ids"][:, 0] == 0).all()


def test_default_shakespeare_pipeline(data_root):
    cfg = run_config(data_root, seq_len=64, batch_size=8, eval_batches=3)
    pipe = make_pipeline(cfg)
    assert pipe.tokenizer.vocab_size == 259 and cfg.data.source == "shakespeare"
    import tensorflow_datasets as tfds

    train = tfds.data_source(shakespeare.NAME, split="train", data_dir=data_root["tfds"])
    assert pipe.train_stream.num_documents == len(train)
    for d in range(len(train)):  # the stream holds every document, then EOS
        doc = pipe.train_stream.document(d)
        assert bytes(doc[:-1].astype(np.uint8)) == train[d]["text"] and doc[-1] == EOS
    it = pipe.train_iterator()
    b = next(it)
    assert set(b) == {"tokens"} and b["tokens"].shape == (8, 65) and b["tokens"].dtype == np.int32
    assert it.data_time >= 0 and it.total_data_time >= it.data_time
    assert it.get_state() == json.loads(json.dumps(it.get_state()))
    assert it.get_state()["position"] == 8

    ev = pipe.eval_batches()  # the first held-out windows, in order, any seed
    val = pipe.eval_stream
    assert len(ev) == 3
    for i, e in enumerate(ev):
        np.testing.assert_array_equal(e["tokens"], [val.window(i * 8 + r, 65) for r in range(8)])
    other = make_pipeline(run_config(data_root, seq_len=64, batch_size=8, eval_batches=3, seed=5))
    assert all((a["tokens"] == b["tokens"]).all() for a, b in zip(ev, other.eval_batches()))
    assert not (next(other.train_iterator())["tokens"] == b["tokens"]).all()  # seeds differ


def test_same_seed_same_batches_across_process_counts(data_root, corpus):
    """P = 1, 2, 4 simulated processes form the same global batches, and over an epoch read
    every window exactly once."""
    _, source = corpus
    cfg = run_config(data_root, source=source, seq_len=15, batch_size=4, seed=3)
    ref = make_pipeline(cfg)
    steps = -(-ref.windows_per_epoch // 4)
    global_batches = [b["tokens"] for b in _rows(ref, steps)]
    again = [b["tokens"] for b in _rows(make_pipeline(cfg), steps)]
    np.testing.assert_array_equal(global_batches, again)  # deterministic
    for count in (2, 4):
        parts = [_rows(make_pipeline(cfg, process_index=p, process_count=count), steps) for p in range(count)]
        for s in range(steps):
            assert all(parts[p][s]["tokens"].shape == (4 // count, 16) for p in range(count))
            np.testing.assert_array_equal(
                np.concatenate([parts[p][s]["tokens"] for p in range(count)]), global_batches[s]
            )
    rows = [tuple(r) for b in global_batches for r in b][: ref.windows_per_epoch]
    assert sorted(rows) == sorted(_windows(ref))


def test_resume_continues_with_exactly_the_next_batch(data_root, corpus):
    _, source = corpus
    cfg = run_config(data_root, source=source, seq_len=15, batch_size=4, seed=1, document_masking=True)
    uninterrupted = _rows(make_pipeline(cfg), 9)
    it = make_pipeline(cfg, 1, 2).train_iterator()
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
    assert state == make_pipeline(cfg, 0, 2).train_iterator().get_state() | {"position": 20}
    for count in (1, 2, 4):  # restore on another number of processes
        parts = [_rows(make_pipeline(cfg, p, count), 4, start=state) for p in range(count)]
        for s in range(4):
            for key in ("tokens", "segment_ids"):
                np.testing.assert_array_equal(
                    np.concatenate([parts[p][s][key] for p in range(count)]), uninterrupted[5 + s][key]
                )
    it = make_pipeline(cfg).train_iterator()  # the interim contract's state still works
    it.set_state({"step": 5})
    np.testing.assert_array_equal(next(it)["tokens"], uninterrupted[5]["tokens"])


def test_token_cache_follows_the_files(data_root, tmp_path):
    docs = random_documents(6, seed=2, max_len=40)
    source = "text:" + write_text_corpus(tmp_path / "c", docs)
    cfg = run_config(data_root, source=source, seq_len=7, batch_size=2, cache_dir=str(tmp_path / "cache"))
    first = make_pipeline(cfg).train_stream
    assert make_pipeline(cfg).train_stream.fingerprint == first.fingerprint  # read from the cache
    changed = [d + "!" * 9 for d in docs]
    write_text_corpus(tmp_path / "c", changed)
    second = make_pipeline(cfg).train_stream
    assert (
        second.fingerprint != first.fingerprint
        and second.num_tokens == first.num_tokens + 9 * (~held_out(6, 0.2)).sum()
    )
    assert len(os.listdir(tmp_path / "cache")) == 4  # train and eval, before and after


def test_other_tokenizers_pack_their_ids(data_root, corpus, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    docs, source = corpus
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = run_config(data_root, source=source, seq_len=15, batch_size=4, tokenizer=f"hf:{tmp_path}/tokenizer.json")
    pipe = make_pipeline(cfg)
    hf = make_tokenizer(cfg.data.tokenizer)
    train_docs = [d for d, v in zip(docs, held_out(len(docs), 0.2)) if not v]
    stream = [t for d in train_docs for t in hf.encode(d) + [hf.eos_id]]
    np.testing.assert_array_equal(pipe.train_stream.tokens, stream)


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda c: c.data.update({"sorce": "x"}),
            r"config.data.sorce='x' is invalid: not a data setting \(a typo\?\); known: cache_dir, data_dir",
        ),
        (
            lambda c: setattr(c, "data", type(c.data)({**c.data.to_dict(), "shuffle": 1})),
            r"config.data.shuffle=1 is invalid: must be True or False",
        ),
        (lambda c: c.data.update({"num_threads": 0}), r"config.data.num_threads=0 is invalid: must be an integer >= 1"),
        (lambda c: c.data.update({"tokenizer": "gpt2"}), r"config.data.tokenizer='gpt2' is invalid: allowed: byte"),
        (lambda c: c.data.update({"eval_source": "s3://x"}), r"config.data.eval_source='s3://x' is invalid: allowed"),
        (
            lambda c: c.update({"val_fraction": 1.0}),
            r"config.val_fraction=1.0 is invalid: must be a finite number in \(0, 1\)",
        ),
        (
            lambda c: c.update({"batch_size": 6}),
            r"config.batch_size=6 is invalid: must be a multiple of the number of processes \(4\)",
        ),
        (
            lambda c: c.update({"model": {"vocab_size": 200}}),
            r"config.model.vocab_size=200 is invalid: the tokenizer byte has 259 ids",
        ),
        (
            lambda c: c.update({"seq_len": 10**7}),
            r"config.data.source='shakespeare' is invalid: .* fewer than one window",
        ),
    ],
)
def test_config_errors_name_the_key(data_root, change, match):
    cfg = run_config(data_root, batch_size=8)
    change(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_data_config(cfg, process_count=4)
        make_pipeline(cfg, 0, 4)
