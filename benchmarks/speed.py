"""CPU speed benchmark: ms/image of SIR and PatchCore (same teacher) in torch eager, OpenVINO and ONNX Runtime.

Each model is exported through anomalib (pre- and post-processing inside the graph), then every runtime
scores synthetic ``image_size`` images at each batch size: ``--warmup`` untimed calls, then ``--repeats``
timed calls; the reported figure is the **median** time per call divided by the batch size.

PatchCore's anomalib export specialises the batch dimension (its nearest-neighbour search loops over
chunks of patches), so PatchCore is exported once per batch size with a static input shape; SIR is
exported once, with dynamic batch and image size.

Usage (from the repository root)::

    python benchmarks/speed.py                                   # 256 px, batch 1 and 8, SIR + PatchCore
    python benchmarks/speed.py --models sir --ov-hint THROUGHPUT --ov-static --profile
    python benchmarks/speed.py --sir-ckpt results/.../model.ckpt # a trained SIR (speed does not depend on it)
    python benchmarks/speed.py --models sir --sir-arg loops=1 --sir-arg width=64  # an architecture variant

Results (``speed.csv``, ``speed.md``, ``environment.json``) go to a fresh ``--output`` folder.

Example:
    >>> import numpy as np
    >>> ms, _ = median_ms_per_image(lambda batch: batch.sum(), np.zeros((4, 3, 8, 8), np.float32), 1, 3)
    >>> ms >= 0
    True

"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUNTIMES = ("torch", "openvino", "openvino-static", "onnxruntime")
PATCHCORE_LAYERS = ("blocks.2", "blocks.4")  # strides 8 and 16 of tf_efficientnet_lite0, as SIR's layers 2, 3


@dataclass(frozen=True)
class Timing:
    """Median milliseconds per image of one model in one runtime at one batch size."""

    model: str
    runtime: str
    batch_size: int
    image_size: int
    ms_per_image: float
    ms_per_image_min: float
    repeats: int


def median_ms_per_image(
    call: Callable[[np.ndarray], object], images: np.ndarray, warmup: int, repeats: int
) -> tuple[float, float]:
    """``(median, min)`` milliseconds per image of ``call(images)`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call(images)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        call(images)
        times.append(time.perf_counter() - start)
    per_image = [1000.0 * t / len(images) for t in times]
    return statistics.median(per_image), min(per_image)


def benchmark(
    model_name: str,
    runtimes_for_batch: Callable[[int], Mapping[str, Callable[[np.ndarray], object]]],
    batch_sizes: Iterable[int],
    image_size: int,
    warmup: int,
    repeats: int,
) -> list[Timing]:
    """Time every runtime ``runtimes_for_batch(batch_size)`` returns, at every batch size."""
    from anomalib_sir.deploy import synthetic_images

    timings = []
    for batch_size in batch_sizes:
        images = synthetic_images(batch_size, (image_size, image_size), seed=batch_size)
        for runtime_name, call in runtimes_for_batch(batch_size).items():
            median, fastest = median_ms_per_image(call, images, warmup, repeats)
            timings.append(Timing(model_name, runtime_name, batch_size, image_size, median, fastest, repeats))
            print(f"  {model_name:10s} {runtime_name:16s} batch {batch_size}: {median:9.2f} ms/image", flush=True)
    return timings


# ----------------------------------------------------------------------------------------------- runtimes


def openvino_config(hint: str | None, streams: int | None, threads: int | None, precision: str | None) -> dict:
    """OpenVINO CPU compile properties from the command-line options (``None``: plugin default)."""
    config: dict[str, Any] = {}
    if hint:
        config["PERFORMANCE_HINT"] = hint
    if streams is not None:
        config["NUM_STREAMS"] = str(streams)
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


class StaticOpenVINO:
    """OpenVINO model reshaped to a static ``(B, 3, S, S)`` input before compiling (OpenVINO's own API)."""

    def __init__(self, xml: Path, shape: Sequence[int], config: Mapping[str, Any]) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(xml)
        model.reshape({model.input(0).any_name: ov.PartialShape(list(shape))})
        self.compiled = core.compile_model(model, "CPU", dict(config))

    def __call__(self, images: np.ndarray) -> object:
        """Run one synchronous inference."""
        return self.compiled(images)


def make_runtimes(
    model: torch.nn.Module,
    exports: Mapping[str, Path],
    names: Sequence[str],
    batch_size: int,
    image_size: int,
    ov_config: Mapping[str, Any],
    threads: int | None,
) -> dict[str, Callable[[np.ndarray], object]]:
    """Open the requested runtimes for one model (``exports``: ``{"openvino": xml, "onnx": onnx}``)."""
    from anomalib_sir.deploy import OnnxRuntime, OpenVINORuntime, TorchRuntime

    runtimes: dict[str, Callable[[np.ndarray], object]] = {}
    for name in names:
        if name == "torch":
            runtimes[name] = TorchRuntime(model)
        elif name == "openvino":
            # precision=None: the precision hint (or none, for --ov-precision plugin) is already in ov_config
            runtimes[name] = OpenVINORuntime(exports["openvino"], config=dict(ov_config), precision=None)
        elif name == "openvino-static":
            runtimes[name] = StaticOpenVINO(exports["openvino"], (batch_size, 3, image_size, image_size), ov_config)
        elif name == "onnxruntime":
            runtimes[name] = OnnxRuntime(exports["onnx"], threads=threads)
        else:
            msg = f"unknown runtime {name!r}; choose from {RUNTIMES}"
            raise ValueError(msg)
    return runtimes


# ------------------------------------------------------------------------------------------------- models


def parse_sir_args(items: Sequence[str]) -> dict[str, Any]:
    """``["loops=1", "width=64"]`` -> ``{"loops": 1, "width": 64}`` (values read as JSON when they parse).

    Example:
        >>> parse_sir_args(["loops=1", "score_mode=max", "layers=[1,2]"])
        {'loops': 1, 'score_mode': 'max', 'layers': [1, 2]}

    """
    arguments: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
    return arguments


def build_sir(image_size: int, ckpt: Path | None, sir_args: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """SIR with the default teacher (untrained student: speed does not depend on the weights), or a checkpoint."""
    from anomalib_sir import Sir

    if ckpt is not None:
        return Sir.load_from_checkpoint(ckpt, map_location="cpu").eval()
    return Sir(image_size=(image_size, image_size), **(sir_args or {})).eval()


def build_patchcore(image_size: int, train_images: int, coreset_ratio: float) -> torch.nn.Module:
    """PatchCore on SIR's teacher and pre-processor, memory bank from generated normal images."""
    from anomalib.models import Patchcore

    from anomalib_sir import Sir
    from anomalib_sir.allocator import limit_heap_fragmentation
    from anomalib_sir.data.demo import generate_demo_dataset
    from anomalib_sir.data.io import read_image
    from anomalib_sir.teacher import install_offline_teacher

    limit_heap_fragmentation()
    install_offline_teacher("tf_efficientnet_lite0")
    model = Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=list(PATCHCORE_LAYERS),
        coreset_sampling_ratio=coreset_ratio,
        pre_processor=Sir.configure_pre_processor((image_size, image_size)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_demo_dataset(
            Path(tmp), image_size=image_size, num_train=train_images, num_test_normal=0, num_test_abnormal=0
        )
        images = np.stack([read_image(p).transpose(2, 0, 1) for p in sorted((root / "train/good").glob("*.png"))])
    model.model.train()
    with torch.no_grad():
        model.model(model.pre_processor(torch.from_numpy(images)))  # collects the patch embeddings
    model.fit()  # anomalib's core-set subsampling
    return model.eval()


# ---------------------------------------------------------------------------------------------- profiling


def profile_sir_modules(model: torch.nn.Module, batch_size: int, image_size: int, repeats: int = 3) -> dict:
    """Milliseconds per image spent in SIR's parts in torch eager (forward hooks; modules called per loop add up)."""
    from anomalib_sir.deploy import synthetic_images

    parts = {
        "pre_processor": model.pre_processor,
        "teacher": model.model.teacher,
        "fusion (all loops)": model.model.fusion,
        "decoder (all loops)": model.model.decoder,
        "heads (all loops)": model.model.heads,
        "anomaly map (incl. blur)": model.model.anomaly_map_generator,
        "gaussian blur": model.model.anomaly_map_generator.blur,
        "post_processor": model.post_processor,
    }
    totals: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    handles = []
    for name, module in parts.items():
        modules = list(module) if isinstance(module, torch.nn.ModuleList) else [module]
        for sub in modules:
            handles.append(sub.register_forward_pre_hook(lambda *_, n=name: starts.__setitem__(n, time.perf_counter())))
            handles.append(
                sub.register_forward_hook(
                    lambda *_, n=name: totals.__setitem__(n, totals[n] + time.perf_counter() - starts[n])
                )
            )
    images = torch.from_numpy(synthetic_images(batch_size, (image_size, image_size)))
    with torch.inference_mode():
        model(images)
        totals.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            model(images)
        total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    scale = 1000.0 / (repeats * batch_size)
    return {"total": total * scale, **{name: totals[name] * scale for name in parts}}


def profile_openvino_ops(xml: Path, batch_size: int, image_size: int, config: Mapping[str, Any], top: int = 12) -> dict:
    """Milliseconds per image by OpenVINO node type (``PERF_COUNT``), largest first."""
    import openvino as ov

    from anomalib_sir.deploy import synthetic_images

    core = ov.Core()
    compiled = core.compile_model(core.read_model(xml), "CPU", {**config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    images = synthetic_images(batch_size, (image_size, image_size))
    request.infer({0: images})
    request.infer({0: images})
    by_type: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        by_type[info.node_type] += info.real_time.total_seconds() * 1000.0 / batch_size
    return dict(sorted(by_type.items(), key=lambda item: -item[1])[:top])


# ------------------------------------------------------------------------------------------------- report


def format_table(timings: Sequence[Timing]) -> str:
    """Markdown: one row per model and runtime, one column per batch size, speed-up over torch eager.

    Example:
        >>> rows = [Timing("sir", "torch", 1, 256, 40.0, 39.0, 5), Timing("sir", "openvino", 1, 256, 10.0, 9.0, 5)]
        >>> print(format_table(rows).splitlines()[3])
        | sir | openvino | 10.0 (4.0×) |

    """
    batch_sizes = sorted({t.batch_size for t in timings})
    lookup = {(t.model, t.runtime, t.batch_size): t.ms_per_image for t in timings}
    header = "| model | runtime | " + " | ".join(f"batch {b} ms/image" for b in batch_sizes) + " |"
    lines = [header, "|---|---|" + "---|" * len(batch_sizes)]
    for model, runtime in dict.fromkeys((t.model, t.runtime) for t in timings):
        cells = []
        for batch in batch_sizes:
            value, reference = lookup.get((model, runtime, batch)), lookup.get((model, "torch", batch))
            if value is None:
                cells.append("–")
            elif reference and runtime != "torch":
                cells.append(f"{value:.1f} ({reference / value:.1f}×)")
            else:
                cells.append(f"{value:.1f}")
        lines.append(f"| {model} | {runtime} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Machine, library versions, load and settings of the run."""
    import onnxruntime
    import openvino

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "openvino": openvino.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sir", "patchcore"], choices=["sir", "patchcore"])
    parser.add_argument("--runtimes", nargs="+", default=["torch", "openvino", "onnxruntime"], choices=RUNTIMES)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every runtime")
    parser.add_argument("--ov-hint", default="LATENCY", choices=["LATENCY", "THROUGHPUT", "none"])
    parser.add_argument("--ov-streams", type=int, help="OpenVINO NUM_STREAMS (default: from the hint)")
    parser.add_argument(
        "--ov-precision",
        default="f32",
        help="OpenVINO INFERENCE_PRECISION_HINT: f32 (default, the product's), bf16, f16, or 'plugin' (OpenVINO's"
        " own choice: bf16 on CPUs with bf16 units)",
    )
    parser.add_argument("--ov-static", action="store_true", help="also time OpenVINO reshaped to a static batch")
    parser.add_argument("--sir-ckpt", type=Path, help="a trained SIR checkpoint (default: untrained student)")
    parser.add_argument(
        "--sir-arg", action="append", default=[], metavar="KEY=VALUE", help="Sir constructor argument, e.g. loops=1"
    )
    parser.add_argument("--patchcore-train-images", type=int, default=8, help="normals in PatchCore's bank")
    parser.add_argument("--patchcore-coreset", type=float, default=0.1)
    parser.add_argument("--profile", action="store_true", help="also break SIR's latency down by part")
    parser.add_argument("--output", type=Path, default=Path("results/speed"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the results."""
    from anomalib_sir.deploy import export_model, fresh_directory

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    runtimes = list(args.runtimes) + (["openvino-static"] if args.ov_static else [])
    ov_config = openvino_config(
        None if args.ov_hint == "none" else args.ov_hint,
        args.ov_streams,
        args.threads,
        None if args.ov_precision == "plugin" else args.ov_precision,
    )
    output = fresh_directory(args.output)
    exports_root = output / "exports"
    size = args.image_size
    timings: list[Timing] = []
    profile: dict[str, Any] = {}
    if "sir" in args.models:
        print("SIR: exporting (dynamic batch and size) ...", flush=True)
        sir = build_sir(size, args.sir_ckpt, parse_sir_args(args.sir_arg))
        exports = export_model(sir, exports_root / "sir")
        timings += benchmark(
            "sir",
            lambda b: make_runtimes(sir, exports, runtimes, b, size, ov_config, args.threads),
            args.batch_sizes,
            size,
            args.warmup,
            args.repeats,
        )
        if args.profile:
            for batch in args.batch_sizes:
                profile[f"sir torch eager, batch {batch}"] = profile_sir_modules(sir, batch, size)
                profile[f"sir openvino ops, batch {batch}"] = profile_openvino_ops(
                    exports["openvino"], batch, size, ov_config
                )
    if "patchcore" in args.models:
        print("PatchCore: building the memory bank ...", flush=True)
        patchcore = build_patchcore(size, args.patchcore_train_images, args.patchcore_coreset)
        print(f"  memory bank: {tuple(patchcore.model.memory_bank.shape)}", flush=True)
        for batch in args.batch_sizes:
            print(f"PatchCore: exporting at static batch {batch} ...", flush=True)
            exports = export_model(
                patchcore,
                exports_root / f"patchcore_b{batch}",
                input_size=(size, size),
                onnx_kwargs={"dynamic_shapes": ({0: batch},)},
            )
            timings += benchmark(
                "patchcore",
                lambda b, e=exports: make_runtimes(patchcore, e, runtimes, b, size, ov_config, args.threads),
                [batch],
                size,
                args.warmup,
                args.repeats,
            )
    table = format_table(timings)
    print("\n" + table)
    with (output / "speed.csv").open("x", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(timings[0])))
        writer.writeheader()
        writer.writerows(asdict(t) for t in timings)
    (output / "speed.md").write_text(table + "\n")
    info = environment(args)
    if profile:
        info["profile_ms_per_image"] = profile
        print(json.dumps(profile, indent=2))
    (output / "environment.json").write_text(json.dumps(info, indent=2))
    print(f"\nresults: {output}  (load average at end: {info['load_average_at_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
