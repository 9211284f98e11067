"""``anomalib-sir`` console script: subcommands around the SIR plugin.

Training and testing go through anomalib's own CLI (``anomalib train|test --model Sir``).
This script adds what anomalib does not have:

* ``anomalib-sir export --ckpt model.ckpt``: export a trained Sir checkpoint to OpenVINO IR and ONNX, next to
  the checkpoint's run folder by default, into fresh ``weights/<type>[-N]`` folders (never overwritten).
* ``anomalib-sir predict MODEL INPUT...``: score new scans (PNG/JPEG, DICOM files or series, NIfTI
  volumes) with an exported model; write ``predictions.csv`` and heatmap PNGs.
* ``anomalib-sir parity --ckpt model.ckpt``: export to OpenVINO and ONNX and check both against torch.
* ``anomalib-sir add-domain --ckpt model.ckpt --name oct --images refs/ --output model_oct.ckpt``: register a
  new domain from k normal images in a trained model, without retraining (a new checkpoint file).

Problems with what was passed (a missing file, a folder without images, another model's checkpoint) are
reported in one line naming the file and the fix, with exit status 2; ``--verbose`` (before or after the
subcommand) adds INFO logs and the traceback.

Adding a subcommand: write a ``configure(parser)`` function that declares its arguments and a
``run(args) -> int`` handler, and decorate the handler with :func:`register` in this module (see
``predict`` below). Keep heavy imports (torch, anomalib) *inside* the handler, so that
``anomalib-sir --help`` stays instant. Raise :class:`anomalib_sir.deploy.errors.DeployError` for a user
error.

Example:
    >>> from anomalib_sir.cli import build_parser
    >>> sorted(name for name in SUBCOMMANDS)[:3]
    ['add-domain', 'benchmark', 'export']
    >>> build_parser().parse_args(["predict", "model.xml", "scans/"]).output
    'predictions'

"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: on a terminal)")
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
        progress=False if args.no_progress else None,
    )
    print(run.summary())
    return 0


# ---------------------------------------------------------------------------------------------- export


def _default_export_root(checkpoint: Path) -> Path:
    """Return the run folder of an anomalib checkpoint (``<run>/weights/lightning/model.ckpt``), else its folder."""
    parent = checkpoint.resolve().parent
    if parent.name == "lightning" and parent.parent.name == "weights":
        return parent.parent.parent
    return parent


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="trained Sir checkpoint (.ckpt)")
    parser.add_argument(
        "--output",
        type=Path,
        help="export root; files go to OUTPUT/weights/<type>/ (default: the checkpoint's run folder, i.e. next to"
        " its weights/lightning/); an existing export is never overwritten: weights/<type>-2, -3, ... instead",
    )
    parser.add_argument(
        "--format",
        nargs="+",
        choices=["openvino", "onnx"],
        default=["openvino", "onnx"],
        help="what to export (default: both; traced once)",
    )


@register("export", "export a trained Sir checkpoint to OpenVINO IR / ONNX (never overwrites)", _export_arguments)
def _export(args: argparse.Namespace) -> int:
    from anomalib_sir.deploy import export_model, load_sir_checkpoint

    model = load_sir_checkpoint(args.ckpt)
    root = args.output if args.output is not None else _default_export_root(args.ckpt)
    paths = export_model(model, root, export_types=args.format)
    for export_type, path in paths.items():
        print(f"{export_type}: {path}")
    first = paths.get("openvino", next(iter(paths.values())))
    print(f"score scans with: anomalib-sir predict {first} SCANS...")
    return 0


# ------------------------------------------------------------------------------------------ add-domain


def _add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="trained Sir checkpoint (.ckpt); never modified")
    parser.add_argument("--name", required=True, help="name of the new domain (e.g. a scanner or modality)")
    parser.add_argument(
        "--images", nargs="+", type=Path, required=True, help="normal images of the domain: files or folders"
    )
    parser.add_argument("--output", type=Path, required=True, help="new checkpoint to write (must not exist)")


@register(
    "add-domain",
    "register a new domain from k normal images, without retraining (new checkpoint)",
    _add_domain_arguments,
)
def _add_domain(args: argparse.Namespace) -> int:
    from anomalib_sir.deploy import add_domain_to_checkpoint

    print(add_domain_to_checkpoint(args.ckpt, args.name, args.images, args.output).summary())
    return 0


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

    from anomalib_sir.deploy import (
        DeployError,
        check_parity,
        export_model,
        iter_scan_images,
        load_sir_checkpoint,
        synthetic_images,
    )

    for given in (args.openvino, args.onnx):
        if given is not None and not given.is_file():
            raise DeployError(f"exported model not found: {given}", fix="pass the model.xml / model.onnx of an export")
    model = load_sir_checkpoint(args.ckpt)
    if args.images:
        images = [scan.image.transpose(2, 0, 1)[None] for scan in iter_scan_images(args.images)]
    else:
        images = synthetic_images(args.num_images, tuple(args.size))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [p for p in (args.openvino, args.onnx) if p is not None]
        if not paths:
            paths = list(export_model(model, args.export_root or Path(tmp)).values())
            if args.export_root:
                print("exported: " + ", ".join(str(p) for p in paths))
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


def _add_verbose(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log at INFO level; tracebacks on errors"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="anomalib-sir", description=__doc__.split("\n\n")[0].replace("``", ""))
    _add_verbose(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        if not any("--verbose" in action.option_strings for action in sub._actions):
            _add_verbose(sub, default=argparse.SUPPRESS)  # also accepted after the subcommand
    return parser


def configure_logging(verbose: bool) -> None:
    """One plain console handler on the root logger, at INFO (``verbose``) or WARNING.

    The handler's own level filters too, so loggers that set themselves to INFO (Lightning does) stay quiet
    unless ``verbose``. An existing root handler (pytest's, a caller's) is left alone: nothing is added twice.
    The ONNX graph-pass loggers stay at WARNING even with ``verbose`` (see ``anomalib_sir_hook``).
    """
    from anomalib_sir_hook import quiet_chatty_loggers

    level = logging.INFO if verbose else logging.WARNING
    quiet_chatty_loggers()
    root = logging.getLogger()
    root.setLevel(level)
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)


def _error_line(error: BaseException) -> str:
    """Format ``error`` as one line: user errors as they are, anything else with its type."""
    from anomalib_sir.data.io import ImageReadError

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > 300:
        text = text[:297] + "..."
    known = isinstance(error, ImageReadError | FileNotFoundError) or type(error).__module__.startswith(
        "anomalib_sir.deploy"
    )
    if known:
        return text
    return f"{type(error).__name__}: {text} (run with --verbose for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status (2 for an error in what was passed)."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    configure_logging(verbose)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print(f"anomalib-sir {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if verbose:
            traceback.print_exc()
        print(f"anomalib-sir {args.command}: error: {_error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
