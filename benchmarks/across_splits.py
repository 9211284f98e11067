"""Pool benchmark runs that differ only in ``split_seed``: mean ± std over data splits.

The harness keeps one split per dataset fixed (``split_seed``), so a full-shot cell (one training set) has
no seed-to-seed spread. To see how much a full-shot figure depends on *which* normals were held out, run
the harness once per split seed and pool the run folders here: each run's ``split_seed`` takes the place
of the reference-draw seed, and the report's own tables give mean ± std over splits.

Usage (from the repository root)::

    for s in 1 2 3 4; do
      anomalib-sir benchmark --config configs/benchmark.yaml --set split_seed=$s --set 'settings=[specialized]' \
          --set 'shots=[{k: all, seeds: [0]}]' --set 'cost={measure: none}' --set name=full-split$s
    done
    python benchmarks/across_splits.py results/benchmark/medical-20261124-0245 \
        results/benchmark/full-split{1,2,3,4}-* --shot full --setting specialized

Writes ``results.csv`` (every pooled row, ``seed`` = split seed) and ``summary.md`` (per dataset and mean
over datasets) to a fresh ``--output`` folder and prints the tables.

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"model": ["SIR"] * 2, "setting": ["specialized"] * 2, "shot": ["full"] * 2,
    ...                      "dataset": ["headct"] * 2, "seed": [0, 0], "image_AUROC": [0.9, 0.8]})
    >>> pooled = relabel_seed_as_split(rows, split_seed=3)
    >>> pooled["seed"].tolist(), pooled["split_seed"].tolist()
    ([3, 3], [3, 3])

"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from anomalib_sir.benchmark.report import collect_results, markdown_table, mean_over_datasets_table, summarize


def relabel_seed_as_split(results: pd.DataFrame, split_seed: int) -> pd.DataFrame:
    """Copy of ``results`` whose ``seed`` column is ``split_seed`` (kept also as ``split_seed``)."""
    pooled = results.copy()
    pooled["split_seed"] = split_seed
    pooled["seed"] = split_seed
    return pooled


def pool_runs(run_dirs: Sequence[Path], setting: str | None = None, shot: str | None = None) -> pd.DataFrame:
    """Rows of every run folder (optionally one setting / shot), one split seed per run.

    Raises:
        ValueError: a folder is not a finished run, two folders share a split seed, or one has several seeds
            for the selected cells (pooling would mix reference draws with splits).

    """
    frames, seen = [], {}
    for run_dir in run_dirs:
        config_path = Path(run_dir) / "config.yaml"
        if not config_path.is_file():
            msg = f"{run_dir}: no config.yaml, not a benchmark run folder"
            raise ValueError(msg)
        split_seed = int((yaml.safe_load(config_path.read_text()) or {}).get("split_seed", 0))
        if split_seed in seen:
            msg = f"{run_dir} and {seen[split_seed]} both use split_seed {split_seed}"
            raise ValueError(msg)
        seen[split_seed] = run_dir
        results = collect_results(Path(run_dir))
        if setting is not None:
            results = results[results["setting"] == setting]
        if shot is not None:
            results = results[results["shot"] == shot]
        if results.empty:
            msg = f"{run_dir}: no finished cells for setting={setting!r}, shot={shot!r}"
            raise ValueError(msg)
        if results.groupby(["model", "setting", "shot", "dataset"])["seed"].nunique().max() > 1:
            msg = f"{run_dir}: several reference draws per cell; pick one shot with --shot (e.g. full)"
            raise ValueError(msg)
        frames.append(relabel_seed_as_split(results, split_seed))
    return pd.concat(frames, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line entry point; returns the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="benchmark run folders, one per split_seed")
    parser.add_argument("--setting", help="keep one setting (specialized / universal)")
    parser.add_argument("--shot", help="keep one shot label (e.g. full, 1-shot)")
    parser.add_argument("--output", type=Path, help="output folder (default results/splits/<time>; must not exist)")
    args = parser.parse_args(argv)
    pooled = pool_runs(args.run_dirs, setting=args.setting, shot=args.shot)
    output = args.output or Path("results/splits") / dt.datetime.now().strftime("splits-%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=False)
    pooled.to_csv(output / "results.csv", index=False)
    splits = ", ".join(str(s) for s in sorted(pooled["split_seed"].unique()))
    text = (
        f"# Pooled over split seeds {splits} (the 'seeds' column counts splits)\n\n"
        f"{markdown_table(summarize(pooled))}\n\n## Mean over datasets\n\n{mean_over_datasets_table(pooled)}\n"
    )
    (output / "summary.md").write_text(text)
    print(text)
    print(f"Written to {output}")
    return output


if __name__ == "__main__":
    main()
