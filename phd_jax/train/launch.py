"""What `train.py` does around the trainer: multi-host start-up, one-line errors, the final sample."""

from __future__ import annotations

import os
import re
import signal
import sys

import jax

# The sample printed after training (`config.sample_tokens` tokens after `config.sample_prompt`).
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 40


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
):
    """`jax.distributed.initialize` when this is one of several processes: explicit flags, or the
    environment jax knows (JAX_COORDINATOR_ADDRESS, SLURM, Cloud TPU pods, ...). Call before any
    other JAX work. On CPU the collectives go through gloo."""
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    env = (
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    )
    if not (explicit or env):
        return
    if "cpu" in (os.environ.get("JAX_PLATFORMS") or "cpu").split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def flag_error_message(e: BaseException) -> str:
    """One line for an error raised while parsing --config overrides (unknown key, bad file)."""
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...))
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    m = re.match(r"""['"]?'?([^'"\n]+)'?['"]?\nDid you mean "([^"]+)" instead""", text)
    if m or isinstance(e, (KeyError, AttributeError)):
        key = m.group(1) if m else text.strip("'\"")
        flag = next(
            (
                a.split("=")[0]
                for a in sys.argv[1:]
                if a.startswith("--config.") and re.search(rf"\.{re.escape(key)}(\.|=|$)", a)
            ),
            None,
        )
        hint = f" (did you mean {m.group(2)!r}?)" if m else ""
        return f"{flag or '--config'}: {key!r} is not a config key{hint}"
    from phd_jax.errors import ConfigError

    cause, found = e, None
    while cause is not None:  # the ConfigError raised by get_config, under ml_collections' re-raises
        if isinstance(cause, ConfigError):
            found = cause
        # `raise ... from None` hides the context: an error re-raised with a better message wins
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    if found is not None:
        text = str(found)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:  # ml_collections puts the loader's traceback in the message: keep its last line
        last = re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])
        return last if found is not None else f"{lines[0].rstrip(':')}: {last}"
    if found is not None or text.startswith("flag --"):
        return text
    return f"{type(e).__name__}: {text}"


class _SampleStopped(Exception):
    pass


def _stop_sample(signum, frame):
    raise _SampleStopped(signal.Signals(signum).name)


def sample_after_training(config, workdir: str):
    """Print a sample of `config.sample_tokens` tokens from the workdir's latest checkpoint.

    Every process runs it (orbax's checkpoint manager synchronises all processes: one that
    skipped it would leave the others waiting forever); each samples on its own first local
    device, without collectives, and only process 0 prints. Training is saved by then, so a
    SIGTERM or Ctrl-C here skips the sample with one line and the run still exits 0."""
    if not config.sample_tokens:
        return
    old = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    old[sig] = signal.signal(sig, _stop_sample)
            except ValueError:  # not the main thread: no handler
                pass
        _sample(config, workdir)
    except _SampleStopped as e:
        if jax.process_index() == 0:
            print(f"{e}: skipped the sample after training (training is complete and saved)")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _sample(config, workdir: str):
    import numpy as np

    from phd_jax.data import make_pipeline
    from phd_jax.sampling import generate
    from phd_jax.train.checkpoint import restore_params

    cfg, params, step = restore_params(workdir)
    tok = make_pipeline(config).tokenizer
    prompt = np.asarray(tok.encode(config.sample_prompt), np.int32)[None]
    out = generate(
        params,
        cfg,
        prompt,
        int(config.sample_tokens),
        rng=jax.random.key(config.seed),
        temperature=SAMPLE_TEMPERATURE,
        top_k=SAMPLE_TOP_K,
        max_len=prompt.shape[1] + int(config.sample_tokens),
    )
    if jax.process_index() == 0:
        print(f"\n--- sample from {cfg.name} (step {step}) ---\n{config.sample_prompt}{tok.decode(out[0])}")
