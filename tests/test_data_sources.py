"""Sources: the embedded TFDS builder prepares offline and reads back every document byte for
byte; tfds/text/jsonl sources; each bad input is a clear error."""

import json
import os
import shutil

import pytest
import tensorflow_datasets as tfds
from data_helpers import random_documents, run_config, write_jsonl_corpus, write_text_corpus

from phd_jax.data import documents, make_pipeline, shakespeare, validate_data_config
from phd_jax.data.sources import held_out
from phd_jax.errors import ConfigError


def test_embedded_builder_reads_back_every_document_byte_for_byte(data_root):
    files = {os.path.basename(f)[:-4]: open(f, "rb").read().replace(b"\r\n", b"\n") for f in shakespeare.text_files()}
    seen = {}
    for split in ("train", "validation"):
        source = tfds.data_source(shakespeare.NAME, split=split, data_dir=data_root["tfds"])
        ids = [source[i]["id"].decode() for i in range(len(source))]
        for i, key in enumerate(ids):
            assert source[i]["text"] == files[key], key  # byte for byte
        seen[split] = set(ids)
    assert not seen["train"] & seen["validation"]  # disjoint, by document
    assert seen["train"] | seen["validation"] == set(files)  # and together every work
    assert seen["validation"] == set(shakespeare.VALIDATION)
    builder = tfds.builder(shakespeare.NAME, data_dir=data_root["tfds"])
    assert builder.info.file_format.value == "array_record"
    assert builder.info.splits["train"].num_examples == len(files) - len(shakespeare.VALIDATION)


def test_sources_by_name_and_glob(data_root, tmp_path):
    cfg = run_config(data_root, source=f"tfds:{shakespeare.NAME}:{shakespeare.VERSION}")
    docs = documents(cfg, cfg.data.source, "eval")
    assert len(docs) == 3 and all(len(docs[i]) > 10_000 for i in range(3))
    cfg.data.train_split = "train[:5]"  # TFDS slicing
    assert len(documents(cfg, cfg.data.source, "train")) == 5

    texts = random_documents(10, seed=1)
    cfg = run_config(data_root, source="text:" + write_text_corpus(tmp_path / "txt", texts), val_fraction=0.2)
    train, val = documents(cfg, cfg.data.source, "train"), documents(cfg, cfg.data.source, "eval")
    is_val = held_out(10, 0.2)
    assert is_val.sum() == 2
    assert [train[i] for i in range(len(train))] == [t for t, v in zip(texts, is_val) if not v]
    assert [val[i] for i in range(len(val))] == [t for t, v in zip(texts, is_val) if v]

    path = write_jsonl_corpus(tmp_path / "c.jsonl", texts, key="body")
    cfg = run_config(data_root, source=f"jsonl:{path}", text_key="body", eval_source=f"jsonl:{path}")
    every = documents(cfg, cfg.data.eval_source, "eval_source")  # an eval source: all of it
    assert [every[i] for i in range(len(every))] == texts


def test_a_dataset_prepared_elsewhere_reads_by_name(data_root, tmp_path):
    """A TFDS dataset whose builder class this process does not know, read from its files."""
    src = os.path.join(data_root["tfds"], shakespeare.NAME)
    shutil.copytree(src, tmp_path / "my_corpus")
    info = tmp_path / "my_corpus" / shakespeare.VERSION / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["name"] = "my_corpus"
    info.write_text(json.dumps(meta))
    for f in (tmp_path / "my_corpus" / shakespeare.VERSION).glob(f"{shakespeare.NAME}-*"):
        f.rename(f.with_name(f.name.replace(shakespeare.NAME, "my_corpus")))
    cfg = run_config(data_root, source="tfds:my_corpus", data_dir=str(tmp_path))
    docs = documents(cfg, cfg.data.source, "eval")
    ref = tfds.data_source(shakespeare.NAME, split="validation", data_dir=data_root["tfds"])
    assert [docs[i] for i in range(len(docs))] == [ref[i]["text"].decode() for i in range(len(ref))]


def _error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        validate_data_config(cfg)
        make_pipeline(cfg)


def test_bad_sources_are_clear_errors(data_root, tmp_path):
    _error(
        run_config(data_root, source="tfds:no_such_dataset"),
        r"config.data.source='tfds:no_such_dataset' is invalid: no TFDS dataset 'no_such_dataset' "
        r"under data_dir=.*Prepare it first, as array_record: `tfds build no_such_dataset",
    )
    _error(
        run_config(data_root, source="tfds:mnist"),
        r"the TFDS dataset 'mnist' is not prepared under data_dir=.*--file_format=array_record",
    )
    _error(
        run_config(data_root, source=f"tfds:{shakespeare.NAME}", text_key="body"),
        r"config.data.text_key='body' is invalid: the TFDS dataset 'shakespeare_corpus' has features id, title, text",
    )
    _error(
        run_config(data_root, source=f"tfds:{shakespeare.NAME}", eval_split="test"),
        r"config.data.eval_split='test' is invalid: the TFDS dataset 'shakespeare_corpus' has splits train, validation",
    )
    _error(
        run_config(data_root, source=f"text:{tmp_path}/nothing/*.txt"),
        r"config.data.source='text:.* is invalid: the glob '.*/nothing/\*.txt' matches no files",
    )
    _error(
        run_config(data_root, source="csv:x"), r"config.data.source='csv:x' is invalid: allowed: shakespeare, tfds:NAME"
    )
    path = write_jsonl_corpus(tmp_path / "c.jsonl", ["a", "b"], key="body")
    _error(
        run_config(data_root, source=f"jsonl:{path}"),
        r"config.data.text_key='text' is invalid: .*c.jsonl line 1 has no 'text' \(its keys: body, meta\)",
    )
    one = write_text_corpus(tmp_path / "one", ["just one document"])
    _error(run_config(data_root, source=f"text:{one}"), "holds a single document, so none can be held out")
    _error(
        run_config(data_root, source=f"text:{one}", eval_source=f"text:{one}"),
        r"config.data.source='text:.*' is invalid: .* fewer than one window of seq_len \+ 1 = 33",
    )


def test_a_tfrecord_dataset_is_refused(data_root, tmp_path):
    """TFDS writes tfrecord only with TensorFlow, so fake one: the same files, info says tfrecord."""
    shutil.copytree(os.path.join(data_root["tfds"], shakespeare.NAME), tmp_path / shakespeare.NAME)
    info = tmp_path / shakespeare.NAME / shakespeare.VERSION / "dataset_info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "fileFormat": "tfrecord"}))
    _error(
        run_config(data_root, source=f"tfds:{shakespeare.NAME}", data_dir=str(tmp_path)),
        r"is prepared as tfrecord, which has no random access: prepare it again with --file_format=array_record",
    )


def _first_error(cfg, role="train") -> str:
    with pytest.raises(ConfigError) as e:
        docs = documents(cfg, cfg.data.source, role)
        [docs[i] for i in range(len(docs))]
    assert "\n" not in str(e.value)
    return str(e.value)


def test_jsonl_errors_name_the_file_and_its_own_line(data_root, tmp_path):
    """A bad line of the second file is reported with that file's name and line number (1-based,
    blank lines counted), not its index among all the lines of the glob."""
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl_corpus(d / "a.jsonl", ["one", "two", "three"])
    (d / "b.jsonl").write_text('{"text": "four"}\n\n{"text": oops}\n')
    message = _first_error(run_config(data_root, source=f"jsonl:{d}/*.jsonl", eval_source=f"jsonl:{d}/a.jsonl"))
    assert message.startswith(f"config.data.source: {d}/b.jsonl line 3: not valid JSON (Expecting value"), message
    (d / "b.jsonl").write_text('{"text": "four"}\n{"body": "five"}\n')
    message = _first_error(run_config(data_root, source=f"jsonl:{d}/*.jsonl", eval_source=f"jsonl:{d}/a.jsonl"))
    assert message == f"config.data.text_key='text' is invalid: {d}/b.jsonl line 2 has no 'text' (its keys: body)"
    (d / "b.jsonl").write_bytes(b'{"text": "\xff\xfe\xfa\xfb"}\n')  # not UTF-8
    message = _first_error(run_config(data_root, source=f"jsonl:{d}/*.jsonl", eval_source=f"jsonl:{d}/a.jsonl"))
    assert message.startswith(f"config.data.source: {d}/b.jsonl line 1: not text (4 of its 17 bytes"), message


def test_binary_files_are_refused_unless_decode_errors_replace(data_root, tmp_path):
    """A text source whose files are not text (NUL bytes, mostly undecodable) is refused naming the
    file; a few bad bytes are tolerated (U+FFFD); data.decode_errors=replace reads anything."""
    d = tmp_path / "txt"
    write_text_corpus(d, ["hello world", "second document", "third"])
    text = (d / "doc0001.txt").read_bytes()
    (d / "doc0001.txt").write_bytes(text + b"\xff")  # one stray byte in 16: U+FFFD, too many
    cfg = run_config(data_root, source=f"text:{d}/*.txt", eval_source=f"text:{d}/doc0000.txt")
    assert f"{d}/doc0001.txt: not text (1 of its 16 bytes are not UTF-8, the first at byte 15" in _first_error(cfg)
    (d / "doc0001.txt").write_bytes(text * 10 + b"\xff")  # 1 in 151: under 1%, read with U+FFFD
    docs = documents(cfg, cfg.data.source, "train")
    assert docs[1] == text.decode() * 10 + "\ufffd"
    for binary, cause in (
        (bytes(range(256)) * 4, "a NUL byte at byte 0"),
        (os.urandom(2000).replace(b"\0", b"x"), "bytes are not UTF-8"),
    ):
        (d / "doc0002.txt").write_bytes(binary)
        message = _first_error(cfg)
        assert message.startswith(f"config.data.source: {d}/doc0002.txt: not text (") and cause in message, message
        assert "config.data.decode_errors=replace" in message
        cfg.data.decode_errors = "replace"
        validate_data_config(cfg)
        docs = documents(cfg, cfg.data.source, "train")
        assert docs[2] == binary.decode("utf-8", errors="replace")
        cfg.data.decode_errors = "strict"
    cfg.data.decode_errors = "lossy"
    with pytest.raises(ConfigError, match="config.data.decode_errors='lossy' is invalid: allowed: strict, replace"):
        validate_data_config(cfg)
    del cfg.data["decode_errors"]  # a run config saved before the key existed: strict
    validate_data_config(cfg)


def test_decode_errors_may_change_on_resume(tmp_path):
    """data.decode_errors is recorded in config.json and may change when a run resumes (strict
    only refuses files that replace reads); a run saved before the key existed resumes too."""
    from phd_jax.train import checkpoint as ckpt
    from phd_jax.train.config import base_config, to_json

    saved = base_config()
    assert '"decode_errors": "strict"' in to_json(saved)
    (tmp_path / "config.json").write_text(to_json(saved))
    new = base_config()
    new.data.decode_errors = "replace"
    assert ckpt.check_workdir(str(tmp_path), new)["data"]["decode_errors"] == "strict"
    old = json.loads(to_json(saved))
    del old["data"]["decode_errors"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert ckpt.check_workdir(str(tmp_path), new) is not None
