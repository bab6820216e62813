"""MetricWriter: the jsonl file, TensorBoard events, resume without duplicates, console output."""

import glob
import json
import math
import os
import struct

import numpy as np
import pytest
from helpers import tiny_config

from phd_jax.train.metrics import MetricWriter, format_value, read_metrics, series, throughput


def read_events(logdir):
    """Every Event of the TFRecord files under `logdir`, parsed independently of the writer
    (record = u64 length, u32 crc, payload, u32 crc), in file-name order as TensorBoard reads."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            payload = data[i + 12 : i + 12 + length]
            assert len(payload) == length, f"truncated record in {path}"
            events.append(event_pb2.Event.FromString(payload))
            i += 12 + length + 4
    return events


def scalars(events):
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


def test_jsonl_tensorboard_and_console(tmp_path, capsys):
    loss = 2.3512345678901234
    with MetricWriter(tmp_path, total_steps=300) as w:
        w.write(100, {"loss": np.float32(1.5), "learning_rate": 3e-4, "tokens": 12800, "val_loss": loss, "mfu": 0.4321})
        w.write(200, {"loss": loss, "grad_norm": 0.25})
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [100, 200]
    assert recs[0] == {
        "step": 100,
        "loss": 1.5,
        "learning_rate": 3e-4,
        "tokens": 12800,
        "val_loss": loss,
        "mfu": 0.4321,
    }
    assert recs[1]["loss"] == loss  # full precision, not console rounding
    assert isinstance(recs[0]["tokens"], int)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["step"] for x in lines)

    sc = scalars(read_events(tmp_path / "tensorboard"))
    assert sc[("loss", 100)] == 1.5 and sc[("grad_norm", 200)] == 0.25
    assert sc[("loss", 200)] == pytest.approx(loss, rel=1e-6)  # float32 in the event file
    assert sc[("tokens", 100)] == 12800 and ("val_loss", 100) in sc

    out = capsys.readouterr().out  # captured: not a terminal
    assert "\r" not in out, "piped output must have no progress bar"
    first = out.splitlines()[0]
    assert first.startswith("step 100/300 | loss 1.500 | learning_rate 3.00e-04 | tokens 12.8k")
    assert "mfu 43.2%" in first
    assert f"loss {loss:.4g}" in out.splitlines()[1] and str(loss) not in out


def test_progress_bar_only_when_asked(tmp_path, capsys):
    with MetricWriter(tmp_path / "a", total_steps=10, progress=True) as w:
        w.write(5, {"loss": 1.0})
    assert "\r" in capsys.readouterr().out  # the bar redraws with carriage returns
    with MetricWriter(tmp_path / "b", total_steps=10, progress=False) as w:
        w.write(5, {"loss": 1.0})
    assert capsys.readouterr().out == "step 5/10 | loss 1.000\n"


def test_resume_drops_later_steps(tmp_path):
    with MetricWriter(tmp_path, progress=False) as w:
        for step in (1, 2, 3, 4):
            w.write(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:  # killed mid-write
        f.write('{"step": 5, "lo')
    with MetricWriter(tmp_path, start_step=2, progress=False) as w:
        assert w.dropped == 3
        w.write(3, {"loss": 30.0})
        w.write(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")
    events = read_events(tmp_path / "tensorboard")
    # The resumed file sorts after the first and opens with TensorBoard's purge marker at 3.
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [3]
    assert len(glob.glob(str(tmp_path / "tensorboard" / "events.*"))) == 2
    # Purging as TensorBoard does leaves each step once, with the resumed run's values.
    kept = {}
    for e in events:
        if e.HasField("session_log"):
            kept = {k: v for k, v in kept.items() if k[1] < e.step}
        kept.update({(v.tag, e.step): v.simple_value for v in e.summary.value})
    assert kept == {("loss", 1): 1.0, ("loss", 2): 2.0, ("loss", 3): 30.0, ("loss", 4): 40.0}

    with MetricWriter(tmp_path, start_step=0, progress=False) as w:  # started over
        assert w.dropped == 4
        w.write(1, {"loss": 5.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 5.0)]
    assert [e.step for e in read_events(tmp_path / "tensorboard") if e.HasField("session_log")] == [3, 1]


def test_resume_with_nothing_to_drop_leaves_file_untouched(tmp_path):
    with MetricWriter(tmp_path, progress=False) as w:
        w.write(1, {"loss": 1.0})
    before = os.stat(tmp_path / "metrics.jsonl").st_ino
    with MetricWriter(tmp_path, start_step=1, progress=False) as w:
        assert w.dropped == 0
    assert os.stat(tmp_path / "metrics.jsonl").st_ino == before


def test_not_main_writes_nothing(tmp_path, capsys):
    with MetricWriter(tmp_path / "run", is_main=False, total_steps=5, progress=True) as w:
        w.write(1, {"loss": 1.0})
        w.print("hello")
    assert not os.path.exists(tmp_path / "run")
    assert capsys.readouterr().out == ""


def test_bad_values(tmp_path):
    with MetricWriter(tmp_path, progress=False) as w:
        with pytest.raises(TypeError, match="metric 'loss'"):
            w.write(1, {"loss": [1.0]})
        with pytest.raises(ValueError, match="metric 'loss'.*scalar"):
            w.write(1, {"loss": np.ones(2)})
        with pytest.raises(ValueError, match="step=-1"):
            w.write(-1, {"loss": 1.0})
        w.write(2, {"loss": float("nan")})
    with pytest.raises(ValueError, match="after close"):
        w.write(3, {"loss": 1.0})
    assert math.isnan(read_metrics(tmp_path)[0]["loss"])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path / "nowhere")


def test_format_and_series():
    assert format_value("tokens_per_s", 123456.0) == "123k"
    assert format_value("flops", 2.5e15) == "2.5P"
    assert format_value("step_time", 0.1234) == "123ms"
    assert format_value("grad_norm", 1.23456e-5) == "1.235e-05"
    recs = [{"step": 1, "loss": 3.0, "flops": 10.0}, {"step": 2, "loss": 2.0, "val_loss": 2.5, "flops": 20.0}]
    xs, ys = series(recs, "val_loss", x="flops")
    assert xs.tolist() == [20.0] and ys.tolist() == [2.5]


def test_throughput_counts_k_copies():
    cfg = tiny_config("phd", repeat=3)
    out = throughput(cfg, seq_len=16, sequences=4, seconds=2.0, peak_flops_per_s=1e9)
    assert out["tokens_per_s"] == 32 and out["processed_tokens_per_s"] == 96
    assert out["mfu"] == pytest.approx(out["tflops"] * 1e12 / 1e9)
