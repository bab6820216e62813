"""ModelConfig validation: every bad value names its field, the value and what is allowed."""

import dataclasses

import jax
import pytest

from phd_jax import ModelConfig


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(variant="phd", repeat=0), r"ModelConfig.repeat=0 is invalid: must be an integer >= 1"),
        (dict(variant="phd_swa", repeat=2, window=-1), r"ModelConfig.window=-1 is invalid: must be an integer >= 0"),
        (
            dict(variant="phd_cswa", repeat=2, window=2, chunk=0),
            r"ModelConfig.chunk=0 is invalid: must be an integer >= 1",
        ),
        (dict(variant="phd_cswa", repeat=2, window=2), r"ModelConfig.chunk=None is invalid"),
        (
            dict(variant="phd", repeat=2, window=4),
            r"ModelConfig.window=4 is invalid: variant 'phd' has no sliding window",
        ),
        (dict(variant="naive", repeat=2, window=1), r"ModelConfig.window=1 is invalid: variant 'naive'"),
        (dict(variant="phd_swa", repeat=2, chunk=4), r"ModelConfig.chunk=4 is invalid: only phd_cswa is chunked"),
        (dict(variant="vanilla", repeat=3), r"ModelConfig.repeat=3 is invalid: variant 'vanilla' needs repeat=1"),
        (
            dict(variant="phd-swa"),
            r"ModelConfig.variant='phd-swa' is invalid: allowed: vanilla, naive, phd, phd_swa, phd_cswa",
        ),
        (dict(num_heads=6, num_kv_heads=4), r"ModelConfig.num_kv_heads=4 is invalid: must divide num_heads=6"),
        (dict(head_dim=7), r"ModelConfig.head_dim=7 is invalid: must be even"),
        (
            dict(attention="flash"),
            r"ModelConfig.attention='flash' is invalid: allowed: auto, dense, blocksparse, splash",
        ),
        (dict(position_mode="abs"), r"ModelConfig.position_mode='abs' is invalid: allowed: shared, flat"),
        (dict(dtype="float64"), r"ModelConfig.dtype='float64' is invalid: allowed: float32, bfloat16, float16"),
        (dict(param_dtype="int8"), r"ModelConfig.param_dtype='int8' is invalid"),
        (dict(remat="some"), r"ModelConfig.remat='some' is invalid: allowed: none, full, dots"),
        (dict(d_model=0), r"ModelConfig.d_model=0 is invalid: must be an integer >= 1"),
        (dict(vocab_size=2.5), r"ModelConfig.vocab_size=2.5 is invalid"),
        (dict(rope_theta=0.0), r"ModelConfig.rope_theta=0.0 is invalid: must be a finite number > 0"),
        (dict(norm_eps=-1.0), r"ModelConfig.norm_eps=-1.0 is invalid"),
        (dict(variant="phd", repeat=True), r"ModelConfig.repeat=True is invalid"),
    ],
)
def test_invalid_values_raise_with_field_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vanilla", dict(variant="vanilla")),
        ("naive-3", dict(variant="naive", repeat=3)),
        ("PHD-3", dict(variant="phd", repeat=3)),
        ("PHD-SWA-3-16-inf", dict(variant="phd_swa", repeat=3, window=16)),
        ("PHD-CSWA-3-16-32", dict(variant="phd_cswa", repeat=3, window=16, chunk=32)),
    ],
)
def test_paper_names_round_trip(name, kwargs):
    cfg = ModelConfig(**kwargs)
    assert cfg.name == name
    assert ModelConfig.from_name(name) == cfg
    assert ModelConfig.from_name(name.lower(), d_model=64).d_model == 64


def test_position_mode_defaults():
    assert ModelConfig(variant="naive", repeat=3).position_mode == "flat"
    assert ModelConfig(variant="naive", repeat=3, position_mode="shared").position_mode == "shared"
    assert ModelConfig(variant="phd_cswa", repeat=3, window=4, chunk=8).position_mode == "shared"


def test_from_name_rejects_unknown_names():
    with pytest.raises(ValueError, match="model name 'PHD-X' is not one of"):
        ModelConfig.from_name("PHD-X")


def test_config_is_frozen_and_hashable_for_jit():
    cfg = ModelConfig.from_name("PHD-CSWA-2-16-32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.repeat = 3
    assert hash(cfg) == hash(ModelConfig.from_name("PHD-CSWA-2-16-32"))
    assert jax.jit(lambda x, c: x * c.repeat, static_argnums=1)(1.0, cfg) == 2.0
    with pytest.raises(ValueError, match="repeat"):
        cfg.replace(repeat=0)


@pytest.mark.parametrize(
    "name,T,ragged,want",
    [
        ("vanilla", 100, False, 0),
        ("PHD-3", 100, False, 1),  # phd: the last position only
        ("PHD-SWA-3-16-inf", 100, False, 4 * 8 + 1),  # L*w + 1 with w = ceil(16/2) = 8
        ("PHD-SWA-3-16-inf", 20, False, 20),  # never more than the prompt
        ("PHD-SWA-5-3-inf", 100, False, 4 * 1 + 1),  # w = ceil(3/4) = 1
        ("PHD-CSWA-3-16-32", 100, False, 4),  # last chunk holds positions 96..99
        ("PHD-CSWA-3-16-32", 96, False, 32),  # a full last chunk
        ("PHD-CSWA-3-4-32", 96, False, 4 * 2 + 1),  # L*w + 1 shorter than the chunk
        ("PHD-CSWA-3-16-32", 100, True, 32),  # ragged: bounded by C
    ],
)
def test_prefill_tail(name, T, ragged, want):
    cfg = ModelConfig.from_name(name, num_layers=4)
    assert cfg.prefill_tail(T, ragged) == want
