"""ffx.progress: long steps report progress in logs too (stderr not a terminal), not only as a
terminal bar; the loaders, the search and sensitivity go through it."""

import numpy as np
from PIL import Image

from ffx import progress as progress_module
from ffx.datasets import ImageItem, load_batches
from ffx.progress import Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_a_log_gets_a_line_per_tenth_or_ten_seconds_and_a_last_one(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    with Progress(1000, "held-out images") as bar:
        clock.now += 1.0
        bar.update(10)  # before the 2 s delay: nothing
        assert _lines(capsys) == []
        for _ in range(20):  # 20 s at 10 images a second: one line every 10 s (never a tenth)
            clock.now += 1.0
            bar.update(10)
        slow = _lines(capsys)
        assert slow == ["held-out images: 20/1000 img (2%), 2 s, about 98 s left",
                        "held-out images: 120/1000 img (12%), 12 s, about 88 s left"]
        for _ in range(4):  # now fast: a line for each further tenth, at least a second apart
            clock.now += 1.0
            bar.update(190)
        assert len(_lines(capsys)) == 4
        clock.now += 1.0
        bar.update(30)  # the last images: the closing line says it, once
    final = _lines(capsys)
    assert final == ["held-out images: 1000/1000 img (100%), 26 s, done"]


def test_quick_steps_stay_quiet_and_disabled_ones_silent(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    with Progress(10, "quick") as bar:
        clock.now += 0.5
        bar.update(10)
    with Progress(10, "off", enabled=False) as bar:
        clock.now += 60
        bar.update(5)
    assert _lines(capsys) == []


def test_a_stopped_step_says_how_it_ended(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    with Progress(100, "measuring all quantized") as bar:
        clock.now += 3
        bar.update(20)
        bar.outcome = "stopped: it can no longer meet the target"
    lines = _lines(capsys)
    assert lines[-1] == "measuring all quantized: 20/100 img (20%), 3 s, stopped: it can no longer meet the target"


def test_the_image_loader_reports_in_a_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "DELAY", 0.0)
    items = []
    for i in range(30):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(path)
        items.append(ImageItem(path, None))
    preprocess = {"input_size": [3, 8, 8], "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    batches = list(load_batches(items, preprocess, 10, workers=0, description="calibration images"))
    assert sum(len(batch.items) for batch in batches) == 30
    lines = _lines(capsys)
    assert lines and all(line.startswith("calibration images: ") for line in lines)
    assert lines[-1].startswith("calibration images: 30/30 img (100%)") and lines[-1].endswith("done")
    list(load_batches(items, preprocess, 10, workers=0, progress=False))
    assert _lines(capsys) == []
