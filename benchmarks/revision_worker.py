"""One revision's side of `benchmarks/compare_revisions.py` (not run by hand).

Started with the revision's checkout first on `sys.path`, it compiles a train step and a
generation per variant through the public API only (`ModelConfig`, `init_params`, `forward`,
`generate`: names every revision since 0.1.0 has), then answers timing requests read as JSON
lines on stdin with one JSON line each on stdout, so that the parent can interleave two
revisions' measurements round by round.
"""

from __future__ import annotations

import json
import sys
import time


def _train_step(phd_jax, cfg, learning_rate: float = 3e-4):
    """(params, opt_state, step): forward + backward + clipped AdamW, jitted, state donated
    (the same step as benchmarks/train_throughput.py)."""
    import jax
    import jax.numpy as jnp
    import optax

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, b1=0.9, b2=0.95))

    def loss_fn(params, batch):
        logits = phd_jax.forward(params, cfg, batch[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1))

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = phd_jax.init_params(cfg, 0)
    return params, optimizer.init(params), jax.jit(step, donate_argnums=(0, 1))


class Variant:
    def __init__(self, phd_jax, name: str, dims: dict, batch: int, seq: int, gen_batch: int, gen_tokens: int):
        import jax

        self.jax = jax
        self.cfg = phd_jax.ModelConfig.from_name(name, **dims)
        self.batch = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, self.cfg.vocab_size)
        self.params, self.opt_state, step = _train_step(phd_jax, self.cfg)
        self.step = step.lower(self.params, self.opt_state, self.batch).compile()
        prompt = jax.random.randint(jax.random.key(1), (gen_batch, seq // 2), 0, self.cfg.vocab_size)
        gen_params = phd_jax.init_params(self.cfg, 1)
        self.gen_tokens = gen_tokens
        self.generate = lambda: phd_jax.generate(gen_params, self.cfg, prompt, gen_tokens, max_len=seq)
        jax.block_until_ready(self.generate())  # compile

    def train(self, steps: int) -> float:
        """Seconds per step over `steps` consecutive steps."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
        self.jax.block_until_ready((self.params, self.opt_state, loss))
        return (time.perf_counter() - t0) / steps

    def generation(self) -> float:
        """Generated tokens per second per sequence (prefill included, as a user sees it)."""
        t0 = time.perf_counter()
        self.jax.block_until_ready(self.generate())
        return self.gen_tokens / (time.perf_counter() - t0)


def main() -> None:
    setup = json.loads(sys.stdin.readline())
    import phd_jax

    variants = {
        name: Variant(
            phd_jax, name, setup["dims"], setup["batch"], setup["seq"], setup["gen_batch"], setup["gen_tokens"]
        )
        for name in setup["variants"]
    }
    print(json.dumps({"ready": phd_jax.__file__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        v = variants[request["variant"]]
        value = v.train(request["steps"]) if request["op"] == "train" else v.generation()
        print(json.dumps({"value": value}), flush=True)


if __name__ == "__main__":
    main()
