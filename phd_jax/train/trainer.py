"""The training loop: `train_step` / `eval_step` (pure, top level) and `train_and_evaluate`.

    from phd_jax.train import train_and_evaluate
    metrics = train_and_evaluate(configs.default.get_config(), "runs/run")

One `jax.jit` over a (data, fsdp, tensor) mesh; parameters and optimizer state sharded by
the config's logical-axis rules; each process feeds its slice of the global batch.
Checkpoints every `checkpoint_every` steps (async) and on SIGTERM; a second call with
the same workdir resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from phd_jax import paths
from phd_jax.config import ModelConfig
from phd_jax.errors import ConfigError
from phd_jax.model import check_params, init_params, num_params, param_shapes
from phd_jax.train import checkpoint as ckpt
from phd_jax.train import continuation, restore
from phd_jax.train import sharding as shd
from phd_jax.train.config import logical_rules, profile_steps, to_json, validate
from phd_jax.train.init_from import HF_PREFIX, apply_hf_architecture
from phd_jax.train.loss import bits, loss_terms, perplexity
from phd_jax.train.optimizer import learning_rate_schedule, make_optimizer
from phd_jax.train.preemption import Preemption
from phd_jax.train.profiling import StepProfiler
from phd_jax.train.state import TrainState


def __getattr__(name: str):
    if name in ("cross_entropy", "target_weights"):  # moved in 0.2 (the loss is phd_jax.train.loss)
        import warnings

        from phd_jax.train import loss

        warnings.warn(f"phd_jax.train.trainer.{name} moved to phd_jax.train.loss.{name}", DeprecationWarning, 2)
        return getattr(loss, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what is saved."""


# ---- the steps (pure) -------------------------------------------------------------------------


def compute_grads(params, batch: dict, cfg: ModelConfig, grad_accum_steps: int = 1, batch_spec=None):
    """(mean loss, gradients) over the global batch, in `grad_accum_steps` microbatches under
    `lax.scan` (sums of per-token losses and of gradients, divided once by the token count)."""
    grad_fn = jax.value_and_grad(lambda p, b: loss_terms(p, cfg, b), has_aux=True)
    if grad_accum_steps == 1:
        (total, count), grads = grad_fn(params, batch)
    else:

        def split(x):  # row r -> microbatch r % n: every device keeps its own rows
            x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1)
            if batch_spec is not None:
                x = jax.lax.with_sharding_constraint(x, P(None, *batch_spec))
            return x

        def body(carry, micro):
            (t, c), g = grad_fn(params, micro)
            return jax.tree.map(jnp.add, carry, (t, c, g)), None

        zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (total, count, grads), _ = jax.lax.scan(body, zeros, jax.tree.map(split, batch))
    count = jnp.maximum(count, 1.0)
    return total / count, jax.tree.map(lambda g: g / count, grads)


def train_step(
    state: TrainState,
    batch: dict,
    cfg: ModelConfig,
    optimizer,
    schedule,
    grad_accum_steps: int = 1,
    batch_spec=None,
):
    """One optimizer step on a global batch: (new state, metrics). A non-finite loss or gradient
    leaves params and optimizer state unchanged and counts in `state.nonfinite`."""
    params = state.params
    loss, grads = compute_grads(params, batch, cfg, grad_accum_steps, batch_spec)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite=state.nonfinite + (~finite).astype(jnp.int32),
    )
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step), "finite": finite}
    return new_state, metrics


def eval_step(params, batch: dict, cfg: ModelConfig):
    """(sum of NLL, token count) of one evaluation batch."""
    return loss_terms(params, cfg, batch)


# ---- helpers ------------------------------------------------------------------------------------


def enable_compilation_cache(path: str):
    """JAX's persistent compilation cache (a restart after preemption does not recompile)."""
    if not path or jax.config.jax_compilation_cache_dir:
        return
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _global_batch(local: dict, sharding: NamedSharding, process_count: int) -> dict:
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        shape = (value.shape[0] * process_count,) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def _init_params(config, cfg: ModelConfig, params_sh, log):
    """Random init, or `config.init_from` (weights only): a workdir / checkpoint dir, or hf:PATH."""
    source = config.init_from
    if not source:
        return jax.jit(lambda: init_params(cfg, int(config.seed)), out_shardings=params_sh)()
    if source.startswith(HF_PREFIX):
        from phd_jax.interop import load_hf  # lazily: only this path reads Hugging Face checkpoints

        src_cfg, params = load_hf(source[len(HF_PREFIX) :], param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers)
    else:
        src_cfg, params, step = ckpt.restore_params(source)
        source = f"{source} (step {step})"
    try:
        check_params(params, cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"config.init_from={config.init_from!r} is invalid: its parameters ({src_cfg.name}) "
            f"do not fit config.model: {e}"
        ) from None
    want = param_shapes(cfg)
    params = jax.tree.map(lambda x, w: np.asarray(x).astype(w.dtype), params, want)  # the run's param_dtype
    log(f"initialised the weights from {source}")
    return jax.device_put(params, params_sh)


def abstract_train_state(cfg: ModelConfig, optimizer, state_sh):
    """The state's shapes with the target shardings (restore onto any mesh)."""
    params_shape = param_shapes(cfg)
    opt_shape = jax.eval_shape(optimizer.init, params_shape)
    return ckpt.abstract_state(params_shape, opt_shape, state_sh)


def create_train_state(config, cfg: ModelConfig, optimizer, state_sh: TrainState, mesh, log=print) -> TrainState:
    """Step 0: params (random or `config.init_from`) and optimizer state, sharded as `state_sh`."""
    params = _init_params(config, cfg, state_sh.params, log)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(optimizer.init, out_shardings=state_sh.opt_state)(params)
    return TrainState(
        step=jax.device_put(np.int32(0), state_sh.step),
        params=params,
        opt_state=opt_state,
        nonfinite=jax.device_put(np.int32(0), state_sh.nonfinite),
    )


def first_state(config, cfg: ModelConfig, optimizer, state_sh: TrainState, mesh, log=print):
    """A new run's first (state, None or (data iterator state, continuation info), config to record).
    `init_state="full"` continues the run `init_from` names (phd_jax.train.continuation): its whole
    TrainState and data position, and the config records the checkpoint's step directory; else
    step 0 (params random or from `init_from`, a fresh optimizer state)."""
    if config.get("init_state", "params") != "full":
        return create_train_state(config, cfg, optimizer, state_sh, mesh, log), None, config
    state, data_state, info = continuation.restore_full(config, abstract_train_state(cfg, optimizer, state_sh), log)
    recorded = config.copy_and_resolve_references()
    if os.path.basename(os.path.dirname(paths.absolute(config.init_from))) != ckpt.CHECKPOINTS:
        recorded.init_from = info["init_from"]  # a WORKDIR meant its latest checkpoint: record which one
    return state, (data_state, info), recorded


# ---- the loop -----------------------------------------------------------------------------------


class _NewRun:
    """What a new run adds to its workdir, removed again if it fails before its first step: a
    failing first run (a bad backend, a full disk, a compile error) leaves the workdir as it was."""

    def __init__(self, workdir: str):
        self.workdir, self.created, self.active = workdir, None, False
        path = workdir
        while not paths.is_remote(path) and not os.path.lexists(path) and os.path.dirname(path) != path:
            self.created, path = path, os.path.dirname(path)  # the topmost directory the run creates
        paths.refresh(workdir)
        self.before = set(paths.listdir(workdir)) if paths.isdir(workdir) else set()  # no directories on gs://

    def undo(self):
        if not self.active:
            return
        self.active = False
        try:
            paths.refresh(self.workdir)
            if paths.isdir(self.workdir):
                for name in set(paths.listdir(self.workdir)) - self.before:
                    if name in ckpt.OUR_FILES or (name.startswith(".") and name.endswith(".tmp")):
                        path = os.path.join(self.workdir, name)
                        paths.rmtree(path) if paths.isdir(path) else paths.remove(path)
            path = self.workdir
            while self.created and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
                if path == self.created:
                    break
                path = os.path.dirname(path)
        except OSError:  # never hide the error that stopped the run
            pass


def train_and_evaluate(config, workdir: str, progress: bool | None = None, devices=None) -> dict:
    """Train until `config.num_steps` (resuming from WORKDIR's latest checkpoint); return the
    last logged metrics (plus `preempted: True` if SIGTERM stopped the run). `devices`: the
    devices of the mesh (default: all). A new run that fails before its first step leaves
    nothing in the workdir. With `config.init_from=hf:PATH`, `config.model`'s architecture
    fields (and `config.data.tokenizer`, if left at `byte`) are set from the checkpoint, in
    `config` itself (`phd_jax.train.init_from`)."""
    workdir = paths.absolute(workdir)  # a gs:// URL stays as is
    new_run = _NewRun(workdir)
    try:
        with Preemption() as stop:  # from the start: a signal during setup, restore or compilation
            return _train_and_evaluate(config, workdir, progress, devices, new_run, stop)
    except BaseException:
        new_run.undo()
        raise


def _train_and_evaluate(config, workdir: str, progress, devices, new_run: _NewRun, stop: Preemption) -> dict:
    from phd_jax.data import make_pipeline
    from phd_jax.flops import peak_flops, train_flops_per_sequence
    from phd_jax.train.metrics import MetricWriter, throughput

    pi, pc = jax.process_index(), jax.process_count()
    is_main = pi == 0
    apply_hf_architecture(config, print if is_main else (lambda *a, **k: None))  # before the tokenizer is made
    pipe = make_pipeline(config, pi, pc)
    cfg = validate(config, len(devices or jax.devices()), pipe.tokenizer, pc)  # every check before any work
    mesh = shd.make_mesh(config, devices)
    optimizer = make_optimizer(config)
    schedule = learning_rate_schedule(config)
    state_sh, batch_sh = shd.train_shardings(cfg, config, optimizer, mesh)
    shd.check_divisible_heads(cfg, config, mesh)
    saved = ckpt.check_workdir(workdir, config)
    rules = logical_rules(config)

    enable_compilation_cache(config.compilation_cache)
    log = print if is_main else (lambda *a, **k: None)
    state = continued = None
    if saved is None:  # a new run: its first state first, so that a bad init_from leaves the workdir as it was
        state, continued, config = first_state(config, cfg, optimizer, state_sh, mesh, log)
    new_run.active = saved is None and is_main
    it = pipe.train_iterator()
    # A resume writes nothing (config.json included) until a checkpoint restored.
    abstract = abstract_train_state(cfg, optimizer, state_sh)
    restored = ckpt.restore_newest(workdir, abstract, log) if saved is not None else None
    if is_main:
        ckpt.write_run_files(workdir, config, cfg)
        if continued is not None:
            continuation.write_info(workdir, continued[1])

    mgr = ckpt.manager(workdir, config)
    latest = None
    if restored is not None:
        latest, (state, data_state) = restored
        it.set_state(data_state)
        log(f"resuming from step {latest} ({os.path.join(ckpt.shown_path(workdir), ckpt.CHECKPOINTS, str(latest))})")
        if saved.get("num_steps") != config.num_steps:
            log(
                f"config.num_steps changed from {saved.get('num_steps')} to {config.num_steps}: the learning-rate "
                f"schedule is rebuilt for the new length (same warmup; the decay now ends at step "
                f"{config.num_steps}, so it continues from the new schedule's value at step {latest})"
            )
    elif state is None:  # a workdir whose run was set up but never checkpointed
        state, continued, _ = first_state(config, cfg, optimizer, state_sh, mesh, log)
    if continued is not None and latest is None:  # a full-state continuation: the source's data position
        it.set_state(continued[0])
    start = int(jax.device_get(state.step))

    spec = shd.batch_spec(rules)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            cfg=cfg,
            optimizer=optimizer,
            schedule=schedule,
            grad_accum_steps=int(config.grad_accum_steps),
            batch_spec=spec,
        ),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, state_sh.step),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, cfg=cfg),
        in_shardings=(state_sh.params, batch_sh),
        out_shardings=state_sh.step,
    )
    all_finite = jax.jit(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))
    eval_data = None

    def evaluate(params):
        nonlocal eval_data
        if eval_data is None:
            eval_data = [_global_batch(b, batch_sh, pc) for b in pipe.eval_batches()]
        total = count = 0.0
        for b in eval_data:
            t, c = jax.device_get(eval_fn(params, b))
            total, count = total + float(t), count + float(c)
        loss = total / max(count, 1.0)
        unit = "byte" if getattr(pipe.tokenizer, "name", "") == "byte" else "token"
        return {"val_loss": loss, f"val_bits_per_{unit}": bits(loss)}

    saved_steps = []  # this run's saves; the newest is checked once orbax finished it

    def check_saved():
        if saved_steps:
            mgr.wait_until_finished()  # orbax waits for it before the next save anyway
            _check_finalized(workdir, saved_steps.pop())

    def save(step):
        if not bool(jax.device_get(all_finite(state.params))):
            raise TrainingError(
                f"parameters at step {step} are not finite: no checkpoint written "
                f"(the last complete one is step {mgr.latest_step()})"
            )
        check_saved()
        writer.sync()  # the metrics lines up to the checkpoint are durable first (a segment on gs://)
        ckpt.save(mgr, step, state, it.get_state())
        saved_steps.append(step)

    tokens_per_step = int(config.batch_size) * int(config.seq_len)
    flops_per_step = int(config.batch_size) * train_flops_per_sequence(cfg, int(config.seq_len))
    flops_offset = continuation.flops_offset(workdir, flops_per_step)  # a continuation's source steps
    peak = peak_flops(float(config.peak_tflops) or None, cfg.dtype) * mesh.size
    n_params = num_params(state.params)
    log(
        f"model {cfg.name}: {n_params:,} parameters, {cfg.num_layers} layers, d_model {cfg.d_model}, "
        f"vocab {cfg.vocab_size}; mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} "
        f"tensor={mesh.shape['tensor']} over {mesh.size} {mesh.devices.flat[0].platform} device(s), "
        f"{pc} process(es)"
    )
    log(
        f"workdir {ckpt.shown_path(workdir)}: checkpoints in {ckpt.CHECKPOINTS}/ every "
        f"{config.checkpoint_every} steps, metrics in "
        f"{'metrics.jsonl.d/ (segments)' if paths.is_remote(workdir) else 'metrics.jsonl'} and tensorboard/"
    )

    metrics: dict = {}
    writer = MetricWriter(
        workdir, is_main=is_main, total_steps=int(config.num_steps), start_step=start, progress=progress
    )
    writer.write_text("config", "```\n" + to_json(config) + "\n```", start)
    preempted = False
    profiler = StepProfiler(workdir, profile_steps(config), log)
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            if start >= config.num_steps:
                log(f"already trained to step {start} (config.num_steps={config.num_steps})")
                metrics = {"step": start, **evaluate(state.params)}
            t_last, step_last, prev = time.perf_counter(), start, None
            data_time = 0.0
            for step in range(start + 1, int(config.num_steps) + 1):
                if step == start + 1 and stop.agreed():  # a signal during setup or restore
                    preempted = True
                    log(f"{stop.requested}: stopped before step {step}; nothing new to save (resumes at step {start})")
                    break
                profiler.begin(step)
                with profiler.annotate(step):
                    t_data = time.perf_counter()
                    batch = _global_batch(next(it), batch_sh, pc)
                    data_time += time.perf_counter() - t_data
                    state, out = step_fn(state, batch)
                profiler.end(step, state)
                new_run.active = False  # it ran: keep what it wrote
                if prev is not None and not bool(prev[1]["finite"]):  # one step behind: no stall
                    _nonfinite(config, prev[0], prev[1])
                prev = (step, out)
                # evaluation steps are logged too, whatever log_every is
                if step % config.log_every == 0 or step % config.eval_every == 0 or step == config.num_steps:
                    out = jax.device_get(out)
                    if not bool(out["finite"]):
                        _nonfinite(config, step, out)
                    now = time.perf_counter()
                    dt = (now - t_last) / (step - step_last)
                    metrics = {
                        "loss": float(out["loss"]),
                        "perplexity": perplexity(out["loss"]),
                        "grad_norm": float(out["grad_norm"]),
                        "learning_rate": float(out["learning_rate"]),
                        "step_time": dt,
                        "data_time": data_time / (step - step_last),
                        "tokens": step * tokens_per_step,
                        "flops": step * flops_per_step + flops_offset,
                        **throughput(cfg, int(config.seq_len), int(config.batch_size), dt, peak),
                    }
                    if config.skip_nonfinite:
                        metrics["skipped_steps"] = int(jax.device_get(state.nonfinite))
                    if step % config.eval_every == 0 or step == config.num_steps:
                        metrics.update(evaluate(state.params))
                    writer.write(step, metrics)
                    metrics = {"step": step, **metrics}
                    t_last, step_last, data_time = time.perf_counter(), step, 0.0
                else:
                    writer.update(step)
                if stop.agreed():
                    save(step)
                    preempted = True
                    log(
                        f"{stop.requested}: saved a checkpoint at step {step} in "
                        f"{os.path.join(ckpt.shown_path(workdir), ckpt.CHECKPOINTS)}; "
                        f"run the same command again to resume"
                    )
                    break
                if step % config.checkpoint_every == 0 or step == config.num_steps:
                    save(step)
        mgr.wait_until_finished()
        check_saved()
    finally:
        profiler.close()  # a run stopped inside the range: the trace ends there
        mgr.wait_until_finished()
        mgr.close()
        writer.close()
    if preempted:
        metrics["preempted"] = True
    return metrics


def _check_finalized(workdir: str, step: int):
    """A cheap look (no array data) that orbax finished every item of checkpoint `step`."""
    reason = restore.incomplete_reason(os.path.join(workdir, ckpt.CHECKPOINTS, str(step)))
    if reason:
        raise TrainingError(
            f"checkpoint {step} in {os.path.join(ckpt.shown_path(workdir), ckpt.CHECKPOINTS)} was not "
            f"written completely ({reason}): the next resume skips it"
        )


def _nonfinite(config, step: int, out):
    if config.skip_nonfinite:
        return
    raise TrainingError(
        f"non-finite loss ({float(out['loss'])}) or gradient norm ({float(out['grad_norm'])}) "
        f"at step {step}: stopped without saving it; the last checkpoint is clean. Lower "
        f"config.learning_rate, or set config.skip_nonfinite=True to skip such updates"
    )
