"""Same-harness benchmark: SIR vs PatchCore vs Reverse Distillation on the same data, splits and teacher.

Entry point: ``python -m anomalib_sir.benchmark --config configs/benchmark.yaml`` (or
``anomalib-sir benchmark``), implemented by :func:`anomalib_sir.benchmark.cli.main`. Modules:

* :mod:`.config` - the YAML config; :mod:`.grid` - cells (model x setting x shot x seed x datasets);
* :mod:`.data` - dataset readers, fixed seeded splits, k-shot draws, the datamodule factory;
* :mod:`.worker` - one cell: anomalib ``Engine`` training, raw-score metrics, cost measurements;
* :mod:`.runner` - per-cell processes, resume, progress; :mod:`.report` - CSV, markdown, plots;
* :mod:`.reverse_distillation` - anomalib's Reverse Distillation extended to EfficientNet teachers.

Example:
    >>> from anomalib_sir.benchmark import main
    >>> callable(main)
    True

"""

from anomalib_sir.benchmark.cli import main

__all__ = ["main"]
