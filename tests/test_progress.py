"""Progress in a log file is lines, not tqdm frames."""

from __future__ import annotations

import io

from harness.common.progress import PlainProgress, progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_gets_a_line_per_interval_and_one_at_the_end(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("harness.common.progress.time.monotonic", clock)
    out = io.StringIO()  # not a terminal
    bar = progress(1000, desc="train t", unit="tok", stream=out, interval=10)
    assert isinstance(bar, PlainProgress)
    for _ in range(100):  # 100 updates over 30 s: lines at 10.2 and 20.4 s, then the closing one at 30 s
        clock.now += 0.3
        bar.update(10)
    bar.set_postfix({"loss": "2.5"})
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3
    assert lines[1].startswith("train t: 680/1.00K tok (68.0%)")
    assert lines[0].startswith("train t: 340/1.00K tok (34.0%)")  # at 10.2 s: 34 updates of 10
    assert "33.33 tok/s" in lines[0] and "ETA 0:00:19" in lines[0]  # 340 tok / 10.2 s; 660 left
    assert lines[-1].startswith("train t: 1.00K/1.00K tok (100.0%)") and lines[-1].endswith("loss 2.5")


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    bar = progress(10, desc="x", enabled=False, stream=out)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""


def test_prepare_writes_lines_into_a_log(tmp_path, capsys, monkeypatch):
    """The same through a real command: `slowrun prepare` with its output going to a file, not a terminal."""
    from harness.data.prepare import prepare_track
    from harness.rules.tracks import get_track

    monkeypatch.setenv("SLOWRUN_PROGRESS_INTERVAL", "0")
    prepare_track(get_track("synthetic"), tmp_path / "synthetic", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("prepare synthetic: ") and "tok/s" in line for line in err.splitlines())
