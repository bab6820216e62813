"""Training metrics: one writer, three sinks (console, TensorBoard, `metrics.jsonl`).

`MetricWriter` is generic: it writes whatever scalars it is given. The trainer logs
these names (every `config.log_every` steps unless noted):

| name | meaning |
|---|---|
| `loss` | training cross-entropy (nats per token) of the step's batch |
| `perplexity` | `exp(loss)` |
| `grad_norm` | global norm of the gradient, before clipping |
| `learning_rate` | the schedule's value at this step |
| `step_time`, `data_time` | seconds per step: the whole step, and waiting for input |
| `tokens` | cumulative original tokens trained on (plots against tokens use it) |
| `flops` | cumulative training FLOPs (`phd_jax.flops`: 3 x forward, K copies, the mask's pairs) |
| `tokens_per_s` | original tokens per second |
| `processed_tokens_per_s` | tokens through the layers per second (K times `tokens_per_s`) |
| `tflops` | model TFLOP/s (analytic count / time, not hardware counters) |
| `mfu` | `tflops` / peak (the config's peak, or a matmul measured on this machine) |
| `val_loss` | validation loss, every `config.eval_every` steps |
| `val_bits_per_byte` / `val_bits_per_token` | `val_loss / ln 2` per byte (byte vocabularies) or per token |

Sinks, only in the main process (`is_main=True`):
- console: `step 100/300 | loss 2.351 | ...` with rounded numbers; above a tqdm progress
  bar on a terminal, plain lines (no carriage returns) when stdout is piped;
- TensorBoard event files under `WORKDIR/tensorboard` (tensorboardX: no TensorFlow);
- `WORKDIR/metrics.jsonl`: one JSON object per logged step, floats at full precision.
A resumed run (`start_step=S`) first drops the lines of `metrics.jsonl` after step S and
tells TensorBoard to purge earlier files' events after S, so no step is ever duplicated
(`start_step=0` in a used workdir: a run started over replaces the old records).
`read_metrics(workdir)` and `series(...)` read the file back for plots and experiments.

On an object store (`gs://` workdir) there is no append, and rewriting a growing object at each
flush would upload it again and again. There the lines go to segments instead,
`WORKDIR/metrics.jsonl.d/<lifetime>-<start step>-<part>.jsonl`: each one object written once
(create-only: a second writer fails instead of overwriting), holding the lines since the last
one, written at every checkpoint (`sync()`), every `SEGMENT_LINES` lines or `SEGMENT_SECONDS`
seconds, and on close. A lifetime is one writer (one run of the process); `read_metrics` reads
`metrics.jsonl` (if any) and then the segments in order, and a lifetime that resumed at step S
hides the earlier lines after S: the same records a local `metrics.jsonl` holds. TensorBoard's
event files on gs:// are uploaded whole at each flush (tensorboardX), so there they are flushed
at `sync()`, on close and every `SEGMENT_SECONDS`, not after every line.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys
import time

import numpy as np

from phd_jax import paths
from phd_jax.config import ModelConfig
from phd_jax.errors import as_int, fail
from phd_jax.flops import train_flops_per_sequence

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SEGMENTS_DIR = "metrics.jsonl.d"  # metrics.jsonl as segments, on object stores
SEGMENT_LINES = 1000  # a segment at least every this many lines...
SEGMENT_SECONDS = 300.0  # ...or seconds (and at every checkpoint, and on close)
_SEGMENT = re.compile(r"^(\d+)-(\d+)-(\d+)\.jsonl$")  # lifetime, start step, part


class MetricWriter:
    """Write scalar metrics to the console, TensorBoard and `WORKDIR/metrics.jsonl`.

    `progress`: None picks a tqdm bar when stdout is a terminal and plain lines otherwise;
    True forces the bar, False never draws one. `is_main=False` (other processes of a
    multi-host run) writes nothing at all. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        workdir: str,
        is_main: bool = True,
        total_steps: int | None = None,
        start_step: int = 0,
        progress: bool | None = None,
    ):
        self.workdir = os.fspath(workdir)
        self.is_main = bool(is_main)
        self.total_steps = None if total_steps is None else as_int("total_steps", total_steps, low=0)
        self.start_step = as_int("start_step", start_step, low=0)
        self._bar = self._tb = self._jsonl = None
        self.dropped = 0  # records of an earlier run removed on open (see truncate_metrics)
        self.remote = paths.is_remote(self.workdir)
        if not self.is_main:
            return
        paths.makedirs(self.workdir)
        self.path = os.path.join(self.workdir, METRICS_FILE)
        if self.remote:
            self._segments = _Segments(self.workdir, self.start_step)
            self.dropped = self._segments.dropped
            self._jsonl = self._segments
        else:
            self.dropped = truncate_metrics(self.path, self.start_step)
            self._jsonl = open(self.path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        tb_dir = os.path.join(self.workdir, TENSORBOARD_DIR)
        earlier = paths.isdir(tb_dir) and any(f.startswith("events.") for f in paths.listdir(tb_dir))
        # purge_step: TensorBoard hides the events of earlier files from this step on.
        self._tb = SummaryWriter(
            tb_dir,
            purge_step=self.start_step + 1 if earlier else None,
            flush_secs=int(SEGMENT_SECONDS) if self.remote else 30,
            filename_suffix=_event_suffix(),
        )
        if progress is None:
            progress = sys.stdout.isatty()
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total_steps,
                initial=self.start_step,
                unit="step",
                desc="train",
                file=sys.stdout,
                dynamic_ncols=True,
            )

    # ---- writing -------------------------------------------------------------------
    def write(self, step: int, metrics: dict):
        """Log `metrics` (name -> number) at `step`: one jsonl line, TensorBoard scalars,
        one console line. Numpy / JAX scalars are converted; NaN and inf are written as is."""
        step = as_int("step", step, low=0)
        if not self.is_main:
            return
        if self._jsonl is None:
            raise ValueError("MetricWriter.write after close()")
        values = {"step": step}
        for name, value in metrics.items():
            if name == "step":
                continue
            values[str(name)] = _to_python(name, value)
        self._jsonl.write(json.dumps(values) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if name != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(name, value, step)
        if not self.remote:
            self._tb.flush()
        self.update(step)
        if self._bar is not None and "loss" in values:
            self._bar.set_postfix_str(f"loss {format_value('loss', values['loss'])}", refresh=False)
        self._print(self.format_line(values))

    def update(self, step: int):
        """Move the progress bar to `step` without logging (call it every step if you like)."""
        if self._bar is not None and step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def write_text(self, tag: str, text: str, step: int = 0):
        """A text entry in TensorBoard (e.g. the run's config), nothing on the console."""
        if self.is_main:
            self._tb.add_text(tag, text, step)
            if not self.remote:
                self._tb.flush()

    def sync(self):
        """Make every line logged so far durable (the trainer calls it at each checkpoint): on
        an object store, the pending lines become one segment and TensorBoard's file is uploaded."""
        if self.is_main and self._jsonl is not None:
            self._jsonl.flush()
            if self.remote:
                self._segments.sync()
                self._tb.flush()

    def print(self, text: str):
        """A console line that does not break the progress bar (main process only)."""
        if self.is_main:
            self._print(text)

    def format_line(self, values: dict) -> str:
        step = values["step"]
        head = f"step {step}" if self.total_steps is None else f"step {step}/{self.total_steps}"
        return " | ".join([head] + [f"{k} {format_value(k, v)}" for k, v in values.items() if k != "step"])

    def _print(self, text: str):
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            writers = list((self._tb.all_writers or {}).values())
            self._tb.close()
            if self.remote:
                _uploaded_for_good(writers)
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # an un-closed writer still flushes its files
        try:
            self.close()
        except Exception:
            pass


def _uploaded_for_good(file_writers) -> None:
    """tensorboardX's gs:// writer (GCSRecordWriter) uploads its whole event file on close, and
    again when it is garbage collected, which its atexit hook delays to interpreter exit: one
    useless upload, retried for 120 s when the bucket is no longer reachable. Closed, it has
    nothing more to upload."""
    for fw in file_writers:
        try:
            fw.event_writer._ev_writer._py_recordio_writer._writer.flush = lambda: None
        except AttributeError:  # another tensorboardX version: at worst the extra upload
            pass


def _event_suffix() -> str:
    """Event files are named `events.out.tfevents.<second>.<host>` and opened with mode "wb":
    a second writer in the same second would truncate the first. A nanosecond timestamp
    suffix keeps names unique and in opening order (TensorBoard reads files in name
    order, which its purge of a resumed run's steps relies on)."""
    return f".{time.time_ns()}.{os.getpid()}"


def _to_python(name: str, value):
    """A number as a Python int or float (full precision), other JSON values unchanged."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if np.shape(value) != ():
            fail(f"metric {name!r}", value, "must be a scalar")
        value = np.asarray(value).item()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    fail(f"metric {name!r}", value, "must be a number (or a string)", TypeError)


def format_value(name: str, value) -> str:
    """A metric rounded for the console: `loss 2.351`, `tokens 1.23M`, `lr 3.00e-04`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if name in ("tokens", "flops") or name.endswith("tokens_per_s"):
        return _si(value)
    if name == "learning_rate":
        return f"{value:.2e}"
    if name == "mfu":
        return f"{100 * value:.1f}%"
    if name.endswith("_time"):
        return f"{value * 1e3:.0f}ms" if value < 1 else f"{value:.2f}s"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    if abs(value) < 1:
        return f"{value:.4f}"
    return f"{value:.{max(0, 3 - int(math.floor(math.log10(abs(value)))))}f}"  # 4 digits, fixed


def _si(value: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---- the jsonl file ---------------------------------------------------------------


def _read_lines(path: str) -> tuple[list[dict], int]:
    """Records of a metrics file and the number of unreadable lines (e.g. a line cut short
    when the process was killed mid-write)."""
    records = []
    with paths.open_file(path, "r", encoding="utf-8") as f:
        bad = _parse(f, records, 0)
    return records, bad


class _Segments:
    """`metrics.jsonl` on an object store: lines buffered, written as new objects (never appended
    to, never rewritten) under `WORKDIR/metrics.jsonl.d/`."""

    def __init__(self, workdir: str, start_step: int):
        self.folder = os.path.join(workdir, SEGMENTS_DIR)
        earlier = _segment_names(self.folder)
        self.lifetime = 1 + max((int(_SEGMENT.match(n).group(1)) for n in earlier), default=0)
        self.start_step, self.part, self.lines, self.since = start_step, 0, [], time.monotonic()
        old = _read_records(workdir)[0] if earlier or paths.exists(os.path.join(workdir, METRICS_FILE)) else []
        self.dropped = sum(r["step"] > start_step for r in old)

    def write(self, line: str):
        self.lines.append(line)

    def flush(self):
        if len(self.lines) >= SEGMENT_LINES or time.monotonic() - self.since >= SEGMENT_SECONDS:
            self.sync()

    def sync(self):
        if self.lines:
            name = f"{self.lifetime:06d}-{self.start_step:010d}-{self.part:06d}.jsonl"
            paths.write_atomic(os.path.join(self.folder, name), "".join(self.lines), exclusive=True)
            self.part, self.lines = self.part + 1, []
        self.since = time.monotonic()

    def close(self):
        self.sync()


def _segment_names(folder: str) -> list[str]:
    """The segment objects of a `metrics.jsonl.d` folder, in writing order."""
    if not paths.isdir(folder):
        return []
    return sorted((n for n in paths.listdir(folder) if _SEGMENT.match(n)), key=lambda n: _SEGMENT.match(n).groups())


def _parse(lines, records: list, bad: int) -> int:
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
        else:
            bad += 1
    return bad


def _read_records(workdir: str) -> tuple[list[dict], int]:
    """A workdir's records in writing order, as one local metrics.jsonl holds them: the file (if
    any), then each segment; a writer that started at step S drops the earlier records after S."""
    records, bad = [], 0
    file = os.path.join(workdir, METRICS_FILE)
    if paths.isfile(file):
        records, bad = _read_lines(file)
    folder = os.path.join(workdir, SEGMENTS_DIR)
    lifetime = None
    for name in _segment_names(folder):
        life, start, _ = (int(g) for g in _SEGMENT.match(name).groups())
        if life != lifetime:
            lifetime, records = life, [r for r in records if r["step"] <= start]
        bad = _parse(paths.read_text(os.path.join(folder, name)).splitlines(), records, bad)
    return records, bad


def truncate_metrics(path: str, last_step: int) -> int:
    """Drop the records after `last_step` (and unreadable lines) from a metrics file,
    atomically (a temporary file and `os.replace`). Returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    records, bad = _read_lines(path)
    keep = [r for r in records if r["step"] <= last_step]
    dropped = len(records) - len(keep) + bad
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def read_metrics(workdir: str) -> list[dict]:
    """Every record of `WORKDIR/metrics.jsonl` (or a path to the file itself), in step
    order; on an object store also its segments (`metrics.jsonl.d/`, see above), with a resumed
    run's lines replacing the earlier ones after its first step. Raises FileNotFoundError naming
    the file if there is none."""
    path = os.fspath(workdir)
    if path.endswith(".jsonl") and not paths.isdir(path + ".d"):
        if not paths.exists(path):
            raise FileNotFoundError(f"no metrics at {path} (train first: python train.py --workdir=...)")
        return sorted(_read_lines(path)[0], key=lambda r: r["step"])
    if path.endswith(METRICS_FILE):
        path = os.path.dirname(path)
    paths.refresh(path)
    if not paths.exists(os.path.join(path, METRICS_FILE)) and not _segment_names(os.path.join(path, SEGMENTS_DIR)):
        where = os.path.join(path, METRICS_FILE)
        raise FileNotFoundError(f"no metrics at {where} (train first: python train.py --workdir=...)")
    return sorted(_read_records(path)[0], key=lambda r: r["step"])


def series(records: list[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """`(xs, ys)` of the records that have both `x` and `key`, for plotting, e.g.
    `plt.plot(*series(read_metrics(wd), "val_loss", x="flops"))`."""
    pts = [(r[x], r[key]) for r in records if r.get(x) is not None and r.get(key) is not None]
    xs = np.array([p[0] for p in pts], dtype=np.float64)
    ys = np.array([p[1] for p in pts], dtype=np.float64)
    return xs, ys


# ---- throughput -------------------------------------------------------------------


def throughput(
    cfg: ModelConfig, seq_len: int, sequences: int, seconds: float, peak_flops_per_s: float | None = None
) -> dict[str, float]:
    """Speed metrics of `sequences` sequences of `seq_len` trained in `seconds`:
    `tokens_per_s` (original), `processed_tokens_per_s` (K x), `tflops` (analytic, see
    `phd_jax.flops`) and `mfu` when a peak FLOP/s is given."""
    tokens = sequences * seq_len
    flops = sequences * train_flops_per_sequence(cfg, seq_len)
    out = {
        "tokens_per_s": tokens / seconds,
        "processed_tokens_per_s": tokens * cfg.repeat / seconds,
        "tflops": flops / seconds / 1e12,
    }
    if peak_flops_per_s:
        out["mfu"] = flops / seconds / peak_flops_per_s
    return out
