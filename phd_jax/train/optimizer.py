"""AdamW with warmup + cosine / linear / constant decay, global-norm clipping and a weight-decay mask.

The schedule is a function of the step and `config.num_steps`: a resumed run whose
`num_steps` grew rebuilds it, so warmup stays as it was and the decay stretches to the
new last step (the learning rate at the resume step is the new schedule's value there).
"""

from __future__ import annotations

import fnmatch

import jax
import optax

from phd_jax.tree import path_parts


def learning_rate_schedule(config) -> optax.Schedule:
    peak, warmup, total = float(config.learning_rate), int(config.warmup_steps), int(config.num_steps)
    end = peak * float(config.min_lr_ratio)
    decay_steps = max(total - warmup, 1)
    decay = {
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=float(config.min_lr_ratio)),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "constant": optax.constant_schedule(peak),
    }[config.schedule]
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_patterns(patterns: str) -> list[str]:
    """`config.weight_decay_exclude` ("*norm,embed,bias") as its fnmatch patterns."""
    return [p.strip() for p in patterns.split(",") if p.strip()]


def decay_mask(params, patterns: str):
    """True for parameters that get weight decay: those with no path part matching a pattern."""
    pats = decay_patterns(patterns)

    def keep(path, _):
        return not any(fnmatch.fnmatchcase(part, pat) for part in path_parts(path) for pat in pats)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config) -> optax.GradientTransformation:
    """The run's optimizer (the loss is averaged over the global batch before it)."""
    parts = []
    if float(config.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip)))
    parts.append(
        optax.adamw(
            learning_rate_schedule(config),
            b1=float(config.adam_b1),
            b2=float(config.adam_b2),
            eps=float(config.adam_eps),
            weight_decay=float(config.weight_decay),
            mask=lambda p: decay_mask(p, config.weight_decay_exclude),
        )
    )
    return optax.chain(*parts)
