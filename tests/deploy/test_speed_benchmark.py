"""The speed benchmark times every runtime at every batch size and profiles SIR's parts."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_runtime_is_timed_at_every_batch_size(speed, trained_sir, sir_exports) -> None:
    config = speed.openvino_config("LATENCY", None, 2, None)
    timings = speed.benchmark(
        "sir",
        lambda batch: speed.make_runtimes(trained_sir, sir_exports, speed.RUNTIMES, batch, 64, config, 2),
        batch_sizes=[1, 2],
        image_size=64,
        warmup=1,
        repeats=2,
    )
    assert {(t.runtime, t.batch_size) for t in timings} == {(r, b) for r in speed.RUNTIMES for b in (1, 2)}
    assert all(math.isfinite(t.ms_per_image) and 0 < t.ms_per_image_min <= t.ms_per_image for t in timings)
    table = speed.format_table(timings).splitlines()
    assert table[0] == "| model | runtime | batch 1 ms/image | batch 2 ms/image |"
    assert len(table) == 2 + len(speed.RUNTIMES)
    assert "×)" in table[3]  # speed-up over torch eager


def test_sir_profile_covers_its_parts(speed, trained_sir, sir_exports) -> None:
    parts = speed.profile_sir_modules(trained_sir, batch_size=2, image_size=64, repeats=1)
    assert parts["teacher"] > 0
    assert parts["heads (all loops)"] > 0
    assert parts["gaussian blur"] <= parts["anomaly map (incl. blur)"]
    assert parts["teacher"] + parts["decoder (all loops)"] + parts["heads (all loops)"] < parts["total"]
    ops = speed.profile_openvino_ops(sir_exports["openvino"], batch_size=2, image_size=64, config={})
    assert "Convolution" in ops
    assert all(value >= 0 for value in ops.values())
