"""OpenVINO latency of a ``Sir()`` graph without a domain, with a per-position correction and with a 3x3 one.

Each model gets one domain from 32 random views (untrained decoder: speed does not depend on the weights),
is exported through anomalib, and OpenVINO scores one 128 px image at a time on one thread (f32, latency
hint): 5 untimed calls, then the median of 50, twice per model.

    python benchmarks/domain_latency.py --output OUT

Example:
    >>> [name for name, _ in CORRECTIONS]
    ['no domain', 'per-position correction', '3x3 correction']

"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from anomalib_sir import Sir
from anomalib_sir.deploy import export_model, fresh_directory
from anomalib_sir.models.sir.domains import apply_corrections, domain_descriptor, fit_corrections

sys.path.insert(0, str(Path(__file__).parent))
from speed import benchmark, format_table, make_runtimes, openvino_config

#: The graphs timed: no domain, a domain with the correction of checkpoints made before the 3x3 one, today's.
CORRECTIONS = (("no domain", None), ("per-position correction", 1), ("3x3 correction", 3))
IMAGE_SIZE = 128


def with_domain(context: int | None, views: torch.Tensor) -> Sir:
    """``Sir()`` at ``IMAGE_SIZE`` with one domain whose corrections read ``context x context`` (``None``: none)."""
    sir = Sir(image_size=(IMAGE_SIZE, IMAGE_SIZE)).eval()
    model = sir.model
    if context is None:
        return sir
    features, reconstruction = model.features_and_reconstruction(views)
    corrections = fit_corrections(features, reconstruction, context=context)
    maps = model.raw_anomaly_map(features, apply_corrections(reconstruction, corrections), views.shape[-2:])
    model.domains.add("domain", domain_descriptor(features), corrections, maps, model.anomaly_map_generator.score, 0.07)
    return sir


def main(argv=None) -> int:
    """Export and time each graph; write speed.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    views = torch.rand(32, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    config = openvino_config("LATENCY", None, 1, "f32")
    output = fresh_directory(args.output)
    timings = []
    for name, context in CORRECTIONS:
        sir = with_domain(context, views)
        exports = export_model(sir, output / "exports" / str(context))
        for _ in range(2):
            runtimes = lambda b, s=sir, e=exports: make_runtimes(s, e, ["openvino"], b, IMAGE_SIZE, config, 1)  # noqa: E731
            timings += benchmark(name, runtimes, [1], IMAGE_SIZE, 5, 50)
    (output / "speed.md").write_text(format_table(timings) + "\n")
    print(format_table(timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
