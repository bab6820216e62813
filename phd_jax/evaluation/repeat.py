"""K chosen at inference: a PHD-K checkpoint evaluated with K' hidden copies (`eval.py --repeat`).

PHD adds no parameters: its hidden tokens are the same token again, at the same rotary
position (`position_mode="shared"`), seen through a mask. So the parameters of a PHD-K model
mean the same thing with K' copies; only the computation changes. W keeps its value (it counts
hidden tokens), C too (it counts positions); K' = 1 is the vanilla computation (no hidden
tokens, docs/spec.md section 2). Refused, by name: a checkpoint trained without hidden tokens
(vanilla, or K = 1), naive repetition (its KV cache and positions depend on K), and
`position_mode="flat"` (copy s of position n has rotary position n*K + s).
"""

from __future__ import annotations

from phd_jax.config import PHD_VARIANTS, ModelConfig
from phd_jax.errors import ConfigError, as_int, fail


def with_repeat(cfg: ModelConfig, repeat: int | None) -> ModelConfig:
    """`cfg` evaluated with `repeat` = K' copies per token (None or K' = K: `cfg` unchanged)."""
    if repeat is None:
        return cfg
    repeat = as_int("repeat", repeat, 1, error=ConfigError)
    if repeat == cfg.repeat:
        return cfg
    if cfg.variant == "naive":
        fail(
            "repeat",
            repeat,
            f"--repeat needs a PHD checkpoint; this one is {cfg.name}, naive repetition, whose KV cache "
            "(every copy is cached) and rotary positions depend on K",
            ConfigError,
        )
    if cfg.variant not in PHD_VARIANTS or cfg.repeat == 1:
        fail(
            "repeat",
            repeat,
            f"--repeat needs a PHD checkpoint trained with hidden tokens (K >= 2); this one is "
            f"{cfg.name}, trained with K=1 (a vanilla model)",
            ConfigError,
        )
    if cfg.position_mode != "shared":
        fail(
            "repeat",
            repeat,
            f"--repeat needs position_mode='shared'; this checkpoint ({cfg.name}) has "
            f"position_mode={cfg.position_mode!r}: copy s of position n has rotary position n*K + s, "
            "so its parameters were trained for K",
            ConfigError,
        )
    try:
        return cfg.replace(repeat=repeat)
    except ValueError as e:
        raise ConfigError(f"repeat={repeat} is invalid: {e}") from None


def repeat_note(trained: ModelConfig, cfg: ModelConfig) -> str:
    """The one line saying which K the model was trained with and which K' it runs with."""
    now = f"{cfg.name}, the vanilla computation: no hidden tokens" if not cfg.is_phd else cfg.name
    return (
        f"model {trained.name} trained with K={trained.repeat}, evaluated with K'={cfg.repeat} "
        f"({now}): no parameters change"
    )


def repeat_tag(results: dict) -> str:
    """`@K=3` for results evaluated with a K' other than the trained K, else ``."""
    k, trained = results.get("repeat"), results.get("trained_repeat")
    return f"@K={k}" if k is not None and k != trained else ""
