"""``python -m anomalib_sir.benchmark --config configs/benchmark.yaml`` (see :mod:`.cli`)."""

from anomalib_sir.benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
