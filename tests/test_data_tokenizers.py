"""Tokenizers: byte round trips; SentencePiece and tokenizer.json trained on the fly (no
downloads) round-trip text and agree with their libraries; bad specs are clear errors."""

import io
import json

import numpy as np
import pytest
from data_helpers import random_documents

from phd_jax.data import ByteTokenizer, check_vocab_size, make_tokenizer, padded_vocab_size
from phd_jax.errors import ConfigError

CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die—to sleep,",
    "No more; and by a sleep to say we end",
] * 20
TEXTS = ["To be, or not to be", "arrows of fortune; and by opposing end them", "sleep, to die"]


def test_byte_tokenizer_round_trips_utf8_and_replaces_invalid_bytes():
    tok = make_tokenizer("byte")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    for text in random_documents(20, seed=3) + ["", "naïve 漢字 🙂\n\t\x00"]:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    raw = bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))
    assert tok.decode(list(raw)) == raw.decode("utf-8", errors="replace")
    assert tok.decode([0xE6, 0xBC] + list(b"ok") + [tok.eos_id, tok.pad_id]) == "\ufffdok"


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=60,
        model_type="bpe",
        character_coverage=1.0,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("sp") / "tok.model"
    path.write_bytes(model.getvalue())
    return str(path)


def test_sentencepiece_round_trips_and_matches_the_library(sentencepiece_model):
    import sentencepiece as spm

    tok = make_tokenizer(f"sentencepiece:{sentencepiece_model}")
    ref = spm.SentencePieceProcessor(model_file=sentencepiece_model)
    assert tok.vocab_size == ref.get_piece_size() == 60
    assert (tok.bos_id, tok.eos_id) == (ref.bos_id(), ref.eos_id())
    assert tok.pad_id == tok.eos_id  # no PAD piece: pads with EOS
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text)) == text
        assert tok.eos_id not in tok.encode(text)  # the pipeline adds EOS, not encode


def _train_tokenizer_json(directory, with_config):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>"] if with_config else ["<unk>", "<|endoftext|>"]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if with_config:
        (directory / "tokenizer_config.json").write_text(
            json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>"})
        )
    return tok


@pytest.mark.parametrize("with_config", [True, False])
def test_tokenizer_json_round_trips_and_matches_the_library(tmp_path, with_config):
    ref = _train_tokenizer_json(tmp_path, with_config)
    tok = make_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
    assert tok.vocab_size == ref.get_vocab_size()
    if with_config:
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(ref.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    else:
        assert tok.bos_id == tok.eos_id == tok.pad_id == ref.token_to_id("<|endoftext|>")
    for text in TEXTS + ["naïve 漢字 🙂"]:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text)) == text
    assert make_tokenizer(f"hf:{tmp_path}").encode(TEXTS[0]) == tok.encode(TEXTS[0])  # a directory works


def test_vocab_size_checks_and_padding():
    tok = ByteTokenizer()
    check_vocab_size(259, tok)
    assert padded_vocab_size(tok) == 384
    with pytest.raises(
        ConfigError,
        match=r"config.model.vocab_size=256 is invalid: the tokenizer byte "
        r"has 259 ids, more than the model can embed: use vocab_size >= 259",
    ):
        check_vocab_size(256, tok)


def test_bad_tokenizer_specs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config.data.tokenizer='bpe' is invalid: allowed: byte, sentencepiece:PATH"):
        make_tokenizer("bpe")
    with pytest.raises(
        ConfigError,
        match=r"config.data.tokenizer='hf:/no/such/tokenizer.json' is invalid: "
        r"/no/such/tokenizer.json does not exist",
    ):
        make_tokenizer("hf:/no/such/tokenizer.json")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a readable SentencePiece model"):
        make_tokenizer(f"sentencepiece:{junk}")
    with pytest.raises(ConfigError, match="not a readable tokenizer.json"):
        make_tokenizer(f"hf:{junk}")
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="no EOS token found"):
        make_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
