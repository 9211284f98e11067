"""``anomalib-sir`` console script: subcommands around the SIR plugin.

Training, testing and exporting go through anomalib's own CLI (``anomalib train|test|export --model Sir``).
This script adds what anomalib does not have:

* ``anomalib-sir predict MODEL INPUT...``: score new scans (PNG/JPEG, DICOM files or series, NIfTI
  volumes) with an exported model; write ``predictions.csv`` and heatmap PNGs.
* ``anomalib-sir parity --ckpt model.ckpt``: export to OpenVINO and ONNX and check both against torch.

Adding a subcommand: write a ``configure(parser)`` function that declares its arguments and a
``run(args) -> int`` handler, and decorate the handler with :func:`register` in this module (see
``predict`` below). Keep heavy imports (torch, anomalib) *inside* the handler, so that
``anomalib-sir --help`` stays instant.

Example:
    >>> from anomalib_sir.cli import build_parser
    >>> sorted(name for name in SUBCOMMANDS)[:2]
    ['benchmark', 'parity']
    >>> build_parser().parse_args(["predict", "model.xml", "scans/"]).output
    'predictions'

"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Subcommand:
    """A registered subcommand: its arguments and its handler."""

    name: str
    help: str
    configure: Configure
    run: Handler


#: Registered subcommands by name, in registration order.
SUBCOMMANDS: dict[str, Subcommand] = {}


def register(name: str, help: str, configure: Configure) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of subcommand ``name``.

    Example:
        >>> def _args(parser): parser.add_argument("--n", type=int, default=1)
        >>> @register("example-doc", "doc example", _args)
        ... def _run(args): return args.n - 1
        >>> main(["example-doc", "--n", "1"])
        0
        >>> del SUBCOMMANDS["example-doc"]

    """

    def decorator(run: Handler) -> Handler:
        if name in SUBCOMMANDS:
            msg = f"subcommand {name!r} is already registered"
            raise ValueError(msg)
        SUBCOMMANDS[name] = Subcommand(name=name, help=help, configure=configure, run=run)
        return run

    return decorator


# --------------------------------------------------------------------------------------------- predict


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="exported model: model.xml (OpenVINO IR) or model.onnx")
    parser.add_argument(
        "inputs", nargs="+", type=Path, help="image/DICOM/NIfTI files or folders (searched recursively)"
    )
    parser.add_argument(
        "--output",
        default="predictions",
        help="output folder (default: %(default)s); if it holds files, a numbered sibling is used",
    )
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="same-size images per call (default: 8)")
    parser.add_argument("--no-heatmaps", action="store_true", help="write the CSV only")
    parser.add_argument("--heatmap-size", type=int, default=256, help="heatmap panel size, pixels")
    parser.add_argument(
        "--precision",
        choices=["f32", "bf16", "f16", "plugin"],
        default="f32",
        help="OpenVINO inference precision (default: %(default)s, the trained model's scores; bf16 may be faster"
        " on CPUs with bf16 units, and changes scores; plugin: OpenVINO's own choice, bf16 where the CPU has it)",
    )


@register("predict", "score new scans with an exported model (CSV + heatmap PNGs)", _predict_arguments)
def _predict(args: argparse.Namespace) -> int:
    from anomalib_sir.deploy import predict_scans

    run = predict_scans(
        args.model,
        args.inputs,
        args.output,
        device=args.device,
        batch_size=args.batch_size,
        heatmaps=not args.no_heatmaps,
        heatmap_size=args.heatmap_size,
        precision=None if args.precision == "plugin" else args.precision,
    )
    print(f"{run.num_images} images scored, {run.num_anomalous} anomalous -> {run.csv_path}")
    if run.skipped:
        print(f"{len(run.skipped)} files skipped (not readable images), e.g. {run.skipped[0]}")
    return 0 if run.num_images else 1


# ---------------------------------------------------------------------------------------------- parity


def _parity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="trained Sir checkpoint (.ckpt)")
    parser.add_argument("--openvino", type=Path, help="existing model.xml to check (default: export one)")
    parser.add_argument("--onnx", type=Path, help="existing model.onnx to check (default: export one)")
    parser.add_argument("--export-root", type=Path, help="where to export (default: a temporary folder)")
    parser.add_argument("--images", nargs="+", type=Path, help="inputs to compare on (default: synthetic)")
    parser.add_argument("--num-images", type=int, default=8, help="synthetic images (default: 8)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(300, 260), metavar=("H", "W"), help="synthetic image size"
    )
    parser.add_argument("--atol", type=float, default=1e-3, help="anomaly-map tolerance (default: 1e-3)")


@register("parity", "check exported OpenVINO/ONNX models against torch eager", _parity_arguments)
def _parity(args: argparse.Namespace) -> int:
    import tempfile

    from anomalib_sir import Sir
    from anomalib_sir.deploy import check_parity, export_model, fresh_directory, iter_scan_images, synthetic_images

    model = Sir.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    if args.images:
        images = [scan.image.transpose(2, 0, 1)[None] for scan in iter_scan_images(args.images)]
    else:
        images = synthetic_images(args.num_images, tuple(args.size))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [p for p in (args.openvino, args.onnx) if p is not None]
        if not paths:
            root = fresh_directory(args.export_root) if args.export_root else Path(tmp)
            paths = list(export_model(model, root).values())
        report = check_parity(model, paths, images, atol=args.atol)
    print(f"model image threshold (raw): {report.image_threshold:.6g}")
    print(report.format_table())
    return 0 if report.passed else 1


def _benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    from anomalib_sir.benchmark.cli import configure

    configure(parser)


@register(
    "benchmark", "SIR vs PatchCore vs Reverse Distillation in one harness (accuracy + cost)", _benchmark_arguments
)
def _benchmark(args: argparse.Namespace) -> int:
    from anomalib_sir.benchmark.cli import run

    return run(args)


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="anomalib-sir", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
