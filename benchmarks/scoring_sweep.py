"""Sweep SIR's *scoring* choices without retraining: train once per reference draw, score many ways.

The anomaly map and image score (which teacher stages enter the map, mean vs product fusion, Gaussian
sigma, top-k fraction, last loop vs the mean over loops, horizontal-flip test-time averaging) do not change
what the decoder learns, so one training run per seed can be scored in every combination. Training is the
benchmark harness's own (:func:`anomalib_sir.benchmark.worker.train`: anomalib Engine, same splits,
teacher, image size and step budget as ``configs/ablation.yaml``); variants are ranked by **validation**
AUROC (mean over datasets, then over seeds). Test AUROC is printed beside it for the record only.

Maps are scored at 1/4 of the input resolution (the finest teacher stride used by any default) with the
sigma scaled to match, which keeps ~500 variants x 600 images fast on a CPU.

Usage::

    python benchmarks/scoring_sweep.py                                   # the ablation's reference SIR
    python benchmarks/scoring_sweep.py --init-args '{"layers": [1, 2, 3]}' --name stages123
    python benchmarks/scoring_sweep.py --setting specialized --flip
    python benchmarks/scoring_sweep.py --config configs/benchmark.yaml --setting specialized --shot all \
        --set image_size=256 --name full-px256

Writes ``results/sweeps/<name>-<time>/`` (never reuses a folder): ``aurocs.csv`` (seed, dataset, split,
variant, AUROC) and ``ranking.md`` (every variant, mean ± std over seeds of the mean over datasets).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from anomalib_sir.benchmark.cli import parse_overrides
from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.grid import expand_grid
from anomalib_sir.benchmark.worker import build_data_factory, train
from anomalib_sir.models.sir.anomaly_map import SirAnomalyMapGenerator

SIGMAS = (2.0, 4.0, 8.0)
TOPK_RATIOS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
MAP_STRIDE = 4


def per_scale_maps(
    model: torch.nn.Module, images: torch.Tensor, size: int, flip: bool
) -> list[list[list[torch.Tensor]]]:
    """``[view][loop][scale]`` maps ``1 - cos`` (B, 1, size, size) of the SIR torch model for normalised ``images``.

    Computed by the model's own :meth:`SirAnomalyMapGenerator.scale_maps`; flipped views are flipped back.
    """
    views = [images, torch.flip(images, dims=[-1])] if flip else [images]
    out = []
    with torch.no_grad():
        for index, view in enumerate(views):
            teacher = model.extract_features(view)
            loops = []
            for reconstruction in model.reconstruct(teacher):
                maps = SirAnomalyMapGenerator.scale_maps(teacher, reconstruction, (size, size))
                loops.append([torch.flip(m, dims=[-1]) if index else m for m in maps])
            out.append(loops)
    return out


def score_variants(maps: list[list[list[torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Image scores ``{variant: (B,)}`` for every combination of the scoring choices.

    Fusion, smoothing and top-k scoring are :class:`SirAnomalyMapGenerator`'s own (``fuse`` and ``score``),
    with sigma scaled to the maps' 1/``MAP_STRIDE`` resolution.
    """
    n_views, n_loops, n_scales = len(maps), len(maps[0]), len(maps[0][0])
    views = {"view1": [0]} | ({"flip": list(range(n_views))} if n_views > 1 else {})
    loops = {"last": [n_loops - 1]} | ({"loopmean": list(range(n_loops))} if n_loops > 1 else {})
    subsets = [list(c) for r in range(1, n_scales + 1) for c in itertools.combinations(range(n_scales), r)]
    scorers = {ratio: SirAnomalyMapGenerator(sigma=0.0, topk_ratio=ratio) for ratio in TOPK_RATIOS}
    scores = {}
    for (view_key, view_ids), (loop_key, loop_ids), scales, fusion, sigma in itertools.product(
        views.items(), loops.items(), subsets, ("mean", "product"), SIGMAS
    ):
        if fusion == "product" and len(scales) == 1:
            continue
        generator = SirAnomalyMapGenerator(sigma=sigma / MAP_STRIDE, scale_fusion=fusion)
        pairs = list(itertools.product(view_ids, loop_ids))
        fused = sum(generator.fuse([maps[v][t][s] for s in scales]) for v, t in pairs) / len(pairs)
        stages = "+".join(str(s) for s in scales)
        for ratio, scorer in scorers.items():
            key = f"{view_key}/{loop_key}/stages{stages}/{fusion}/sigma{sigma:g}/top{ratio:g}"
            scores[key] = scorer.score(fused)
    return scores


def reference_variant(model: torch.nn.Module, n_scales: int) -> str:
    """Return the variant key of the model's own scoring (empty if the sweep does not cover it, e.g. max)."""
    generator = model.anomaly_map_generator
    if generator.score_mode != "topk":
        return ""
    stages = "+".join(str(s) for s in range(n_scales))
    return f"view1/last/stages{stages}/{generator.scale_fusion}/sigma{generator.sigma:g}/top{generator.topk_ratio:g}"


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over datasets per seed, then mean ± std over seeds, sorted by validation AUROC."""
    per_seed = frame.groupby(["variant", "split", "seed"]).auroc.mean().unstack("split")
    table = per_seed.groupby("variant").agg(["mean", "std"])
    table.columns = [f"{split}_{stat}" for split, stat in table.columns]
    return table.sort_values("val_mean", ascending=False)


def build_parser() -> argparse.ArgumentParser:
    """Build the sweep's command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ablation.yaml", help="benchmark config (data, splits, budget)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a top-level config key as in `anomalib-sir benchmark`, e.g. --set image_size=256",
    )
    parser.add_argument("--model", default="SIR", help="model key of the config to train")
    parser.add_argument("--init-args", default="{}", help="JSON overrides of the model's init_args")
    parser.add_argument("--max-steps", type=int, help="override the model's optimisation steps (trainer max_steps)")
    parser.add_argument("--setting", default="universal", choices=["universal", "specialized"])
    parser.add_argument("--shot", default="1", help="k normals per dataset, or 'all'")
    parser.add_argument("--flip", action="store_true", help="also score horizontal-flip test-time averaging")
    parser.add_argument("--name", default="scoring", help="run folder prefix under --output")
    parser.add_argument("--output", default="results/sweeps")
    return parser


def sweep_cells(args: argparse.Namespace) -> tuple[BenchmarkConfig, list]:
    """Apply the command line's overrides to the config; return it and the grid cells of the model to sweep.

    ``--init-args`` override the model's constructor arguments for every shot (also its ``shot_init_args``);
    ``--max-steps`` its step budget; ``--set`` top-level config keys.
    """
    config = BenchmarkConfig.from_yaml(args.config, parse_overrides(args.set))
    if args.model not in config.models:
        msg = f"Model {args.model!r} is not in {args.config}; its models: {sorted(config.models)}"
        raise SystemExit(msg)
    spec = config.models[args.model]
    overrides = json.loads(args.init_args)
    shot_args = {key: {**value, **overrides} for key, value in spec.shot_init_args.items()}
    spec = dataclasses.replace(spec, init_args={**spec.init_args, **overrides}, shot_init_args=shot_args)
    if args.max_steps is not None:
        spec = dataclasses.replace(spec, trainer={**spec.trainer, "max_steps": args.max_steps})
    config = dataclasses.replace(config, models={**config.models, args.model: spec})
    shot = None if args.shot == "all" else int(args.shot)
    cells = [c for c in expand_grid(config) if c.model == args.model and c.setting == args.setting and c.shot == shot]
    if not cells:
        msg = f"No {args.setting} {args.shot}-shot cells for model {args.model!r} in {args.config}"
        raise SystemExit(msg)
    return config, cells


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, train per seed, score every variant, write and print the ranking."""
    args = build_parser().parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    config, cells = sweep_cells(args)
    spec = config.models[args.model]
    run_dir = Path(args.output) / f"{args.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=False)
    factory = build_data_factory(config)
    rows, reference = [], ""
    for cell in cells:
        start = time.perf_counter()
        lightning.seed_everything(cell.seed, workers=True, verbose=False)
        with tempfile.TemporaryDirectory() as work_dir:
            _, module, _ = train(config, cell, factory, Path(work_dir))
        model = module.model.eval()
        if model.knn_weight > 0:
            print(f"{cell.cell_id}: knn_weight={model.knn_weight:g}; the sweep scores the reconstruction term only")
        normalize = module.pre_processor.transform
        for dataset in cell.test_datasets:
            datamodule = factory([dataset], cell.shot, cell.seed)
            datamodule.setup()
            for split, data in (("val", datamodule.val_data), ("test", datamodule.test_data)):
                images = torch.stack([data[i].image for i in range(len(data))])
                labels = [int(data[i].gt_label) for i in range(len(data))]
                size = images.shape[-1] // MAP_STRIDE
                chunks = [
                    per_scale_maps(model, normalize(images[i : i + 64]), size, args.flip)
                    for i in range(0, len(images), 64)
                ]
                merged = [
                    [
                        [torch.cat([c[v][t][s] for c in chunks]) for s in range(len(scales))]
                        for t, scales in enumerate(loops)
                    ]
                    for v, loops in enumerate(chunks[0])
                ]
                for variant, scores in score_variants(merged).items():
                    rows.append(
                        {
                            "seed": cell.seed,
                            "dataset": dataset,
                            "split": split,
                            "variant": variant,
                            "auroc": roc_auc_score(labels, scores.numpy()),
                        }
                    )
                reference = reference_variant(model, len(merged[0][0]))
        print(f"{cell.cell_id}: trained and scored in {time.perf_counter() - start:.0f} s", flush=True)

    frame = pd.DataFrame(rows)
    frame.to_csv(run_dir / "aurocs.csv", index=False)
    table = rank(frame)
    table.insert(0, "reference", ["<- model's own scoring" if v == reference else "" for v in table.index])
    header = (
        f"# Scoring sweep `{run_dir.name}`\n\nModel `{args.model}` of `{args.config}` with init_args "
        f"`{json.dumps(spec.init_args_for(cells[0].shot))}`, trainer `{json.dumps(dict(spec.trainer))}`, "
        f"{args.setting} {args.shot}-shot, seeds {[c.seed for c in cells]}. "
        "AUROC: mean over datasets per seed, then mean ± std over seeds; ranked by **validation**.\n\n"
    )
    (run_dir / "ranking.md").write_text(header + table.round(3).to_markdown() + "\n")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 10)
    print(table.round(3).head(15))
    if reference in table.index:
        print("model's own scoring:\n", table.loc[[reference]].round(3))
    print(f"Wrote {run_dir / 'aurocs.csv'} and {run_dir / 'ranking.md'}")


if __name__ == "__main__":
    main()
