"""Shared setup of the data tests: one prepared Shakespeare TFDS dataset and one token cache
per test session (under pytest's tmp dir), small local corpora, run configs."""

import json
import os

import numpy as np
import pytest
from ml_collections import ConfigDict

from phd_jax.data import default_data_config

_SESSION = {}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """`{"tfds": data_dir with shakespeare_corpus prepared, "cache": token cache dir}`, built once."""
    if "root" not in _SESSION:
        from phd_jax.data import shakespeare

        root = tmp_path_factory.mktemp("data")
        shakespeare.prepare(str(root / "tfds"))
        _SESSION["root"] = {"tfds": str(root / "tfds"), "cache": str(root / "cache")}
    return _SESSION["root"]


def run_config(root, seq_len=32, batch_size=4, seed=0, eval_batches=2, val_fraction=0.2, **data) -> ConfigDict:
    d = default_data_config()
    d.data_dir, d.cache_dir = root["tfds"], root["cache"]
    d.num_threads = 1
    d.update(data)
    return ConfigDict(
        {
            "seq_len": seq_len,
            "batch_size": batch_size,
            "seed": seed,
            "eval_batches": eval_batches,
            "val_fraction": val_fraction,
            "data": d,
        }
    )


def random_documents(n, seed=0, max_len=90):
    """`n` documents of random lengths (some empty, some longer than a window), mixed scripts."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghij klmnop\nqrstuvwxyzé漢字🙂")
    return ["".join(rng.choice(alphabet, size=int(rng.integers(0, max_len)))) for _ in range(n)]


def write_text_corpus(directory, docs):
    os.makedirs(directory, exist_ok=True)
    for i, doc in enumerate(docs):
        with open(os.path.join(directory, f"doc{i:04d}.txt"), "w", encoding="utf-8") as f:
            f.write(doc)
    return os.path.join(directory, "*.txt")


def write_jsonl_corpus(path, docs, key="text"):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({key: doc, "meta": len(doc)}) + "\n")
    return path
