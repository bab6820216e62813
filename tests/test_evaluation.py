"""The lm-eval adapter, loss evaluation and generation against direct `phd_jax.forward` references."""

import json
import math
import os

import jax
import numpy as np
import pytest

import phd_jax
from phd_jax.data import ByteTokenizer
from phd_jax.evaluation import (
    PHDLM,
    evaluate_loss,
    generate_text,
    inference_report,
    run_tasks,
    text_batches,
    token_logprobs,
)
from tests.helpers import tiny_config

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class IdTokenizer:
    """One character per id (chr(0x100 + id)): any id sequence is a string, so greedy
    continuations of a random model can be written as text."""

    name, bos_id, eos_id, pad_id = "ids", 1, 2, 0

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def encode(self, text):
        return [ord(c) - 0x100 for c in text]

    def decode(self, ids):
        return "".join(chr(0x100 + int(i)) for i in ids)


MAX_LEN = 32  # the adapter's context (max_length); the model itself allows 128
BATCH = 4  # one batch size everywhere, so the tests share compiled shapes


@pytest.fixture(scope="session")
def model():
    cfg = tiny_config("phd", 2, vocab_size=259, max_seq_len=128)
    return cfg, phd_jax.init_params(cfg, 7)


_forward = jax.jit(phd_jax.forward, static_argnums=1)


def _logp(params, cfg, ids):
    """log p(ids[i+1] | ids[:i+1]) for every i: one forward pass of this sequence alone,
    padded to the model's full length (one compiled shape for every reference; padding
    after the sequence cannot change it, the model is causal: tests/test_model.py)."""
    n = len(ids) - 1
    x = np.zeros((1, cfg.max_seq_len), np.int32)
    x[0, :n] = ids[:-1]
    logits = np.asarray(_forward(params, cfg, x))[0, :n]
    logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    return logp[np.arange(n), ids[1:]], logits.argmax(-1) == np.asarray(ids[1:])


def test_padded_reference_equals_unpadded_forward(model):
    cfg, params = model
    ids = list(range(3, 14))
    lp, _ = _logp(params, cfg, ids)
    logits = np.asarray(phd_jax.forward(params, cfg, np.asarray([ids[:-1]], np.int32)))[0]
    ref = np.asarray(jax.nn.log_softmax(logits, -1))[np.arange(10), ids[1:]]
    assert np.abs(lp - ref).max() < 1e-5


def _req(kind, *args):
    return Instance(kind, {}, args, 0)


def test_loglikelihood_equals_forward_and_is_greedy(model):
    cfg, params = model
    tok = IdTokenizer(cfg.vocab_size)
    lm = PHDLM(params, cfg, tok, batch_size=BATCH, max_length=MAX_LEN)
    rng = np.random.default_rng(0)
    ctx = [rng.integers(3, cfg.vocab_size, n).tolist() for n in (5, 11, 20, 40)]
    # the greedy continuation of ctx[0], 4 tokens long
    greedy = list(ctx[0])
    for _ in range(4):
        x = np.zeros((1, cfg.max_seq_len), np.int32)
        x[0, : len(greedy)] = greedy
        greedy.append(int(np.argmax(_forward(params, cfg, x)[0, len(greedy) - 1])))
    cases = [
        (ctx[0], greedy[5:]),
        (ctx[0], [greedy[5], (greedy[6] + 1) % 259]),
        (ctx[1], rng.integers(3, 259, 3).tolist()),
        (ctx[2], rng.integers(3, 259, 7).tolist()),
        ([], rng.integers(3, 259, 6).tolist()),  # empty context: conditioned on BOS
        (ctx[3], rng.integers(3, 259, 5).tolist()),
    ]  # longer than max_len: left-truncated
    reqs = [_req("loglikelihood", tok.decode(c), tok.decode(x)) for c, x in cases]
    out = lm.loglikelihood(reqs)
    for (c, x), (lp, is_greedy) in zip(cases, out):
        full = ([tok.bos_id] if not c else c) + x
        full = full[-(MAX_LEN + 1) :]
        ref, match = _logp(params, cfg, full)
        assert abs(lp - ref[-len(x) :].sum()) < 1e-4
        assert is_greedy == bool(match[-len(x) :].all())
    assert [g for _, g in out[:2]] == [True, False]


def test_few_compiled_shapes_for_many_lengths(model):
    cfg, params = model
    lm = PHDLM(params, cfg, IdTokenizer(cfg.vocab_size), batch_size=BATCH, max_length=MAX_LEN)
    lm.loglikelihood([_req("loglikelihood", "ĂĂĂ", "ă")])  # the 16-bucket
    before = token_logprobs._cache_size()
    lm.loglikelihood([_req("loglikelihood", "Ă" * n, "ăă") for n in range(1, 14)])
    assert token_logprobs._cache_size() == before  # 13 lengths, 4 batches, no new compile


def test_loglikelihood_rolling_predicts_each_token_once(model):
    cfg, params = model
    tok = IdTokenizer(cfg.vocab_size)
    lm = PHDLM(params, cfg, tok, batch_size=BATCH, max_length=MAX_LEN)
    rng = np.random.default_rng(1)
    texts = [rng.integers(3, 259, n).tolist() for n in (10, 32, 75)]
    out = lm.loglikelihood_rolling([_req("loglikelihood_rolling", tok.decode(t)) for t in texts])
    L = MAX_LEN
    for ids, got in zip(texts, out):
        full = [tok.bos_id] + ids  # full[j + 1] = ids[j]; predict every ids[j] once
        ref = 0.0
        for start in range(0, len(ids), L):  # windows of L predictions, each with the most context
            stop = min(start + L, len(ids))
            lo = max(0, stop - L)  # inputs full[lo:stop] predict full[lo+1:stop+1]
            lp, _ = _logp(params, cfg, full[lo : stop + 1])
            ref += lp[start - lo :].sum()
        assert abs(got - ref) < 1e-4


def test_generate_until_matches_phd_generate(model):
    cfg, params = model
    tok = IdTokenizer(cfg.vocab_size)
    lm = PHDLM(params, cfg, tok, batch_size=BATCH)
    prompts = [[5, 6, 7], [9] * 12, [3, 4]]
    direct = [np.asarray(phd_jax.generate(params, cfg, np.asarray([p], np.int32), 6))[0].tolist() for p in prompts]
    stop = tok.decode(direct[1][2:4])
    reqs = [_req("generate_until", tok.decode(p), {"until": [stop], "max_gen_toks": 6}) for p in prompts]
    out = lm.generate_until(reqs)
    for d, text in zip(direct, out):
        want = tok.decode(d[: d.index(tok.eos_id)] if tok.eos_id in d else d)  # EOS ends it
        assert text == (want[: want.index(stop)] if stop in want else want)
    assert len(out[1]) <= 2


def _independent_mc_accuracy(params, cfg):
    """acc and acc_norm of examples/tasks/shakespeare_mc counted directly from forward."""
    docs = [
        json.loads(line)
        for line in open(os.path.join(ROOT, "examples", "tasks", "shakespeare_mc", "shakespeare_mc.jsonl"))
    ]
    acc = norm = 0
    for doc in docs:
        ctx = list(doc["line"].encode())
        scores = []
        for choice in doc["choices"]:
            cont = list((" " + choice).encode())
            lp, _ = _logp(params, cfg, ctx + cont)
            scores.append((lp[-len(cont) :].sum(), lp[-len(cont) :].sum() / len(choice)))  # lm-eval: chars
        acc += int(np.argmax([s for s, _ in scores]) == doc["answer"])
        norm += int(np.argmax([n for _, n in scores]) == doc["answer"])
    return acc / len(docs), norm / len(docs)


def test_simple_evaluate_on_local_task_gives_its_accuracy(model):
    cfg, params = model
    lm = PHDLM(params, cfg, ByteTokenizer(), batch_size=BATCH)
    metrics = run_tasks(lm, "shakespeare_mc")["shakespeare_mc"]
    acc, acc_norm = _independent_mc_accuracy(params, cfg)
    assert metrics["acc"] == pytest.approx(acc) and metrics["acc_norm"] == pytest.approx(acc_norm)
    with pytest.raises(ValueError, match="shakespeare_mcq.*did you mean shakespeare_mc"):
        run_tasks(lm, "shakespeare_mcq")


def test_loss_on_text_and_generation_errors(model):
    cfg, params = model
    tok = ByteTokenizer()
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 3
    batches = text_batches(tok, text, 16, 4)
    res = evaluate_loss(params, cfg, batches, tok)
    ids = list(text.encode())
    n = (len(ids) - 1) // 16
    nll = [-_logp(params, cfg, ids[i * 16 : (i + 1) * 16 + 1])[0].sum() for i in range(n)]
    assert res["tokens"] == res["bytes"] == 16 * n
    assert res["loss"] == pytest.approx(sum(nll) / (16 * n), abs=1e-5)
    assert res["bits_per_byte"] == pytest.approx(res["loss"] / math.log(2))
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    with pytest.raises(ValueError, match=r"prompt\[1\].*needs 132 positions.*max_seq_len=128"):
        generate_text(params, cfg, tok, ["ok", "x" * 124], 8)


def test_inference_report_cache_bytes(model):
    cfg, params = model
    swa = cfg.replace(variant="phd_swa", window=4)
    (row,) = inference_report(params, swa, lengths=(8,), decode_tokens=2, repeats=1, compare_vanilla=False)
    extra = 2 * cfg.num_layers * 4 * cfg.num_kv_heads * cfg.head_dim * 4  # the window, float32
    assert row["kv_cache_bytes"] - row["vanilla_kv_cache_bytes"] == extra
    assert row["prefill_s"] > 0 and row["decode_s_per_token"] > 0
