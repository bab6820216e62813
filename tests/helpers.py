"""Small models and comparison helpers shared by the tests."""
import jax
import jax.numpy as jnp
import numpy as np

from phd_jax import ModelConfig


def tiny_config(variant="phd", repeat=3, window=0, chunk=None, **kw) -> ModelConfig:
    """A 2-layer GQA model small enough to compile in a second or two."""
    base = dict(vocab_size=61, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
                mlp_dim=64, max_seq_len=64, block_q=16, block_kv=16, attention="blocksparse")
    base.update(kw)
    return ModelConfig(variant=variant, repeat=repeat, window=window, chunk=chunk, **base)


def named_config(name: str, **kw) -> ModelConfig:
    """A paper-named variant (`PHD-CSWA-3-4-3`) with the tiny model's dimensions."""
    dims = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
            "max_seq_len", "block_q", "block_kv", "attention")
    base = tiny_config()
    return ModelConfig.from_name(name, **{**{k: getattr(base, k) for k in dims}, **kw})


def random_tokens(config, batch, length, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, config.vocab_size,
                              dtype=jnp.int32)


def max_diff(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0))
                for x, y in leaves), default=0.0)


# Every distinct variant the spec names, with small K / W / C (name -> kwargs).
VARIANT_GRID = {
    "vanilla": dict(variant="vanilla", repeat=1),
    "naive-2": dict(variant="naive", repeat=2),
    "naive-3": dict(variant="naive", repeat=3),
    "PHD-2": dict(variant="phd", repeat=2),
    "PHD-3": dict(variant="phd", repeat=3),
    "PHD-SWA-2-1-inf": dict(variant="phd_swa", repeat=2, window=1),
    "PHD-SWA-3-4-inf": dict(variant="phd_swa", repeat=3, window=4),
    "PHD-CSWA-2-4-2": dict(variant="phd_cswa", repeat=2, window=4, chunk=2),
    "PHD-CSWA-3-1-3": dict(variant="phd_cswa", repeat=3, window=1, chunk=3),
    "PHD-CSWA-3-4-3": dict(variant="phd_cswa", repeat=3, window=4, chunk=3),
}
