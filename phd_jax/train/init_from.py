"""`config.init_from=hf:PATH`: the run's model takes its architecture from the checkpoint.

The fields that describe the architecture (`phd_jax.config.ARCHITECTURE_FIELDS`: dimensions,
block options, RoPE) are read from the checkpoint's `config.json` and replace `config.model`'s;
the PHD fields, dtypes and kernels stay the run config's. The tokenizer is the checkpoint's
`tokenizer.json` unless the run names one (`config.data.tokenizer` other than the default
`byte`). Every change is printed and lands in the run's `config.json`.
"""

from __future__ import annotations

from phd_jax.config import ARCHITECTURE_FIELDS, canonical_field
from phd_jax.errors import ConfigError
from phd_jax.train.config import check_init

HF_PREFIX = "hf:"
DEFAULT_TOKENIZER = "byte"  # config.data.tokenizer's default: "not given"


def hf_path(config) -> str | None:
    """The checkpoint directory of `config.init_from=hf:PATH`, else None."""
    source = config.init_from if isinstance(config.init_from, str) else ""
    if not source.startswith(HF_PREFIX):
        return None
    path = source[len(HF_PREFIX) :]
    if not path:
        raise ConfigError("config.init_from='hf:' is invalid: name a checkpoint directory, hf:PATH")
    return path


def apply_hf_architecture(config, log=print) -> list[str]:
    """Set `config.model`'s architecture fields (and `config.data.tokenizer`, if not given) from
    the checkpoint of `config.init_from=hf:PATH`, in `config` itself; return the changes."""
    check_init(config)  # init_state=full with hf: is refused before the checkpoint is read
    path = hf_path(config)
    if path is None:
        return []
    from phd_jax.interop import hf_config  # lazily: only this path reads checkpoints
    from phd_jax.interop.hf_files import has_tokenizer

    try:
        source = hf_config(path)
    except FileNotFoundError as e:
        raise ConfigError(f"config.init_from={config.init_from!r} is invalid: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"config.init_from={config.init_from!r} is invalid: {e}") from None
    changes = []
    for field in ARCHITECTURE_FIELDS:
        new, old = getattr(source, field), config.model[field]
        if canonical_field(field, old) != new:
            config.model[field] = new
            changes.append(f"model.{field}={old!r}->{new!r}")
    if changes:
        log(f"config.init_from={config.init_from}: the architecture comes from the checkpoint: {', '.join(changes)}")
    if config.data.tokenizer == DEFAULT_TOKENIZER and has_tokenizer(path):
        config.data.tokenizer = f"hf:{path}"
        changes.append(f"data.tokenizer={DEFAULT_TOKENIZER!r}->{config.data.tokenizer!r}")
        log(f"config.init_from={config.init_from}: the tokenizer is the checkpoint's ({config.data.tokenizer})")
    return changes
