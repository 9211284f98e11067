r"""Apply the project's adoption rule to benchmark rows: is a lever adopted (on validation only).

A candidate is compared with the baseline model over the same one-shot cells (setting x seed x dataset).
It is **adopted** when, in *each* one-shot setting (specialised and universal):

(a) the mean validation AUROC over all datasets improves in at least ``--min-draws`` (4) of the draws, and
(b) no dataset's validation AUROC (mean over draws) drops by more than ``--max-loss`` (0.02).

Test AUROC is reported beside it and never decides anything.

Usage (from the repository root)::

    python benchmarks/adoption_rule.py docs/results/levers-20261202-040527/results.csv \
        docs/results/medical-20261202-004621/results.csv --baseline SIR --output docs/results/levers-adoption

Writes ``summary.md`` (verdicts, then per-dataset deltas) and ``results.csv`` (the compared rows) to a new
``--output`` folder (``-2``, ``-3`` ... if it exists) and prints the summary.

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({
    ...     "model": ["B", "B", "C", "C"] * 2, "setting": ["universal"] * 8, "shot": ["1-shot"] * 8,
    ...     "seed": [0, 1, 0, 1] * 2, "dataset": ["x"] * 4 + ["y"] * 4,
    ...     "val_image_AUROC": [0.6, 0.6, 0.7, 0.7, 0.5, 0.5, 0.49, 0.49],
    ...     "image_AUROC": [0.6, 0.6, 0.65, 0.65, 0.5, 0.5, 0.5, 0.5]})
    >>> verdict = decide(rows, baseline="B", candidate="C", min_draws=2, max_loss=0.02)
    >>> first = verdict.to_dict("records")[0]
    >>> first["setting"], first["draws_improved"], first["worst_dataset"], first["adopted"]
    ('universal', 2, 'y', True)

"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = ["setting", "seed", "dataset"]


def one_shot_rows(paths: list[Path]) -> pd.DataFrame:
    """Read the one-shot rows of every ``results.csv`` (later files do not override earlier ones)."""
    frames = [pd.read_csv(path) for path in paths]
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["shot"] == "1-shot"]
    return rows.drop_duplicates(subset=["model", *KEYS], keep="first")


def decide(rows: pd.DataFrame, baseline: str, candidate: str, min_draws: int, max_loss: float) -> pd.DataFrame:
    """One row per setting: draws improved, mean Δ (val, test), worst dataset Δ val, adopted."""
    base = rows[rows["model"] == baseline].set_index(KEYS)
    cand = rows[rows["model"] == candidate].set_index(KEYS)
    common = base.index.intersection(cand.index)
    delta = cand.loc[common, ["val_image_AUROC", "image_AUROC"]] - base.loc[common, ["val_image_AUROC", "image_AUROC"]]
    delta = delta.reset_index()
    verdicts = []
    for setting, part in delta.groupby("setting"):
        per_draw = part.groupby("seed")["val_image_AUROC"].mean()
        per_dataset = part.groupby("dataset")["val_image_AUROC"].mean()
        improved, worst = int((per_draw > 0).sum()), per_dataset.idxmin()
        passes = improved >= min_draws and per_dataset.min() >= -max_loss
        verdicts.append(
            {
                "candidate": candidate,
                "setting": setting,
                "cells": len(part),
                "draws": len(per_draw),
                "draws_improved": improved,
                "d_val_mean": per_draw.mean(),
                "d_test_mean": part["image_AUROC"].mean(),
                "worst_dataset": worst,
                "d_val_worst": per_dataset.min(),
                "adopted": bool(passes),
            }
        )
    return pd.DataFrame(verdicts)


def per_dataset_deltas(rows: pd.DataFrame, baseline: str, candidate: str) -> pd.DataFrame:
    """Mean over draws of Δ val and Δ test AUROC per setting x dataset."""
    base = rows[rows["model"] == baseline].set_index(KEYS)[["val_image_AUROC", "image_AUROC"]]
    cand = rows[rows["model"] == candidate].set_index(KEYS)[["val_image_AUROC", "image_AUROC"]]
    common = base.index.intersection(cand.index)
    delta = (cand.loc[common] - base.loc[common]).reset_index()
    table = delta.groupby(["setting", "dataset"])[["val_image_AUROC", "image_AUROC"]].mean().reset_index()
    table.insert(0, "candidate", candidate)
    return table.rename(columns={"val_image_AUROC": "d_val", "image_AUROC": "d_test"})


def _markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [f"{v:+.4f}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _new_folder(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def main(argv: list[str] | None = None) -> int:
    """Command line: print and write the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.csv files (candidates and baseline)")
    parser.add_argument("--baseline", default="SIR")
    parser.add_argument("--candidates", nargs="*", help="models to judge (default: every other model)")
    parser.add_argument("--min-draws", type=int, default=4)
    parser.add_argument("--max-loss", type=float, default=0.02)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if missing := [str(p) for p in args.results if not p.is_file()]:
        parser.error(f"no such results file: {', '.join(missing)}")
    rows = one_shot_rows(args.results)
    if args.baseline not in set(rows["model"]):
        parser.error(f"baseline {args.baseline!r} not in the rows (models: {', '.join(sorted(set(rows['model'])))})")
    candidates = args.candidates or sorted(set(rows["model"]) - {args.baseline, "PatchCore", "RD"})
    verdicts = pd.concat([decide(rows, args.baseline, c, args.min_draws, args.max_loss) for c in candidates])
    deltas = pd.concat([per_dataset_deltas(rows, args.baseline, c) for c in candidates])
    text = (
        f"# Adoption rule: candidates vs `{args.baseline}` (one-shot, validation decides)\n\n"
        f"Adopted: mean val AUROC over datasets improves in >= {args.min_draws} draws and no dataset loses more "
        f"than {args.max_loss} val AUROC (mean over draws), in every setting. Δ = candidate - baseline.\n\n"
        f"Inputs: {', '.join(str(p) for p in args.results)}\n\n## Verdicts\n\n{_markdown(verdicts)}\n\n"
        f"## Per dataset (mean Δ over draws)\n\n{_markdown(deltas)}\n"
    )
    print(text)
    if args.output:
        folder = _new_folder(args.output)
        (folder / "summary.md").write_text(text)
        compared = rows[rows["model"].isin([args.baseline, *candidates])]
        compared.to_csv(folder / "results.csv", index=False)
        print(f"wrote {folder}/summary.md and results.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
