"""An lm-evaluation-harness model (`lm_eval.api.model.LM`) over phd_jax parameters."""

from __future__ import annotations

import json

from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from phd_jax.config import ModelConfig
from phd_jax.errors import as_int
from phd_jax.evaluation.generation import generate_text
from phd_jax.evaluation.repeat import with_repeat
from phd_jax.evaluation.scoring import score_sequences


class PHDLM(LM):
    """`loglikelihood`, `loglikelihood_rolling`, `generate_until` for any phd_jax model.

    Requests are batched (`batch_size` rows, padded) and padded to power-of-two lengths,
    so a whole task compiles a handful of shapes. Generation goes through
    `phd_jax.generate` (prefill + a jitted decode scan over the PHD KV cache).
    `repeat` = K' runs a PHD-K model with K' copies per token (same parameters;
    `phd_jax.evaluation.repeat.with_repeat` says what is refused).
    """

    def __init__(
        self,
        params,
        cfg: ModelConfig,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        max_gen_toks: int = 64,
        progress: bool = False,
        repeat: int | None = None,
    ):
        super().__init__()
        # `cfg`, not `config`: lm-eval reads `model.config._name_or_path` (a Hugging Face model's)
        self.params, self.cfg, self.tokenizer = params, with_repeat(cfg, repeat), tokenizer
        self.batch_size = as_int("batch_size", batch_size, 1)
        self.max_length = as_int("max_length", max_length or cfg.max_seq_len, 2, self.cfg.max_seq_len)
        self.max_gen_toks = as_int("max_gen_toks", max_gen_toks, 1)
        self.progress = progress

    # -- tokens ------------------------------------------------------------------
    @property
    def prefix_token_id(self) -> int:
        """What an empty context conditions on: BOS, else EOS, else token 0."""
        for name in ("bos_id", "eos_id"):
            tid = getattr(self.tokenizer, name, None)
            if isinstance(tid, int) and 0 <= tid < self.cfg.vocab_size:
                return tid
        return 0

    def _encode_pair(self, context: str, continuation: str):
        """Context and continuation ids; trailing spaces of the context move to the continuation."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self.tokenizer.encode(continuation)
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        return whole[: len(ctx)], whole[len(ctx) :]

    def _bar(self, total, desc):
        return tqdm(total=total, desc=desc, disable=not self.progress)

    # -- the LM interface --------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        seqs = []
        for req in requests:
            ctx, cont = self._encode_pair(*req.args)
            cont = cont[-self.max_length :]
            seqs.append(((ctx + cont)[-(self.max_length + 1) :], len(cont)))
        with self._bar(len(seqs), "loglikelihood") as bar:
            out = score_sequences(self.params, self.cfg, seqs, self.batch_size, self.max_length, progress=bar)
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        seqs, owner = [], []
        for i, req in enumerate(requests):
            windows = get_rolling_token_windows(
                token_list=self.tokenizer.encode(req.args[0]),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(make_disjoint_window, windows):
                seqs.append((ctx + cont, len(cont)))
                owner.append(i)
        with self._bar(len(seqs), "loglikelihood_rolling") as bar:
            scores = score_sequences(self.params, self.cfg, seqs, self.batch_size, self.max_length, progress=bar)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list = [None] * len(requests)
        with self._bar(len(requests), "generate_until") as bar:
            for key, idx in groups.items():
                kw = dict(json.loads(key))
                until = kw.pop("until", [])
                max_new = min(int(kw.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
                sample = kw.pop("do_sample", False)
                temperature = float(kw.pop("temperature", 0.0)) if sample else 0.0
                texts = generate_text(
                    self.params,
                    self.cfg,
                    self.tokenizer,
                    [requests[i].args[0] for i in idx],
                    max_new,
                    temperature=temperature,
                    top_k=int(kw.pop("top_k", 0) or 0),
                    top_p=float(kw.pop("top_p", 1.0) or 1.0),
                    until=until,
                    batch_size=self.batch_size,
                    truncate=True,
                )
                for i, text in zip(idx, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(idx))
        return out
