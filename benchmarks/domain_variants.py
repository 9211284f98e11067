r"""What a domain should fit: variants of ``add_domain`` scored on the base models of a LODO run (no training).

``benchmarks/add_domain_lodo.py`` saves, per reference draw and held-out dataset H, the universal SIR trained
without H (``work/models``). This script registers H on each of them from ``k`` of its normals in several
ways and scores H's validation and test images against it (explicit route, so the calibration offset does
not matter), giving the ablation table of docs/ablations.md ("What a domain fits"). A variant is:

* ``views``: ``32`` reference views in all (the first design) or ``32`` per reference image (adopted:
  ``Sir.domain_views``);
* ``ridge``: the correction's ridge strength (``None``: no correction, the decoder's reconstruction as is);
* ``diagonal``: the correction per channel only (``t ≈ a r + b``) instead of a full affine map of channels;
* ``nearest``: with ``k > 1``, each reference image's own views give its own z-map statistics and the query
  keeps, per pixel (``"pixel"``) or per image score (``"score"``), the lowest over the references (a nearest
  reference, as a memory bank would have it, instead of one spread over every reference's anatomy);
* ``context``: the correction reads each position's ``context x context`` neighbourhood of the reconstruction
  (a closed-form linear layer with spatial context, ridge on its ``C * context**2 + 1`` inputs) instead of the
  position alone (``1``): more of what retraining the decoder on the domain would learn, still no gradient;
* ``normalise``: ``none`` (the corrected ``1 - cos`` map), ``pixel`` (per-pixel z-map of the reference views,
  the shipped design), ``smooth`` (the same statistics averaged over a 9x9 neighbourhood first: tolerant of
  anatomy that is not at the same place in every image) or ``wide`` (the
  z-map with a floor of three times the mean spread instead of one: between ``none`` and ``pixel``). One
  mean and spread per domain is not a variant: it leaves every domain's AUROC as ``none`` has it.

    python benchmarks/domain_variants.py configs/benchmark.yaml --runs RUN_SEED0 RUN_SEED1 --shots 1 4 \\
        --output docs/results/domain-variants
    python benchmarks/domain_variants.py configs/benchmark.yaml --merge OUT_A OUT_B --output OUT  # one summary

Writes ``results.csv`` (seed, held-out, k, variant, val/test AUROC) and ``summary.md`` (mean over held-out
datasets per draw, how many draws each variant beats ``BASELINE`` on validation, and its worst
per-dataset validation change) to a new folder. Choose on validation; test is reported.

Example:
    >>> [v.name for v in VARIANTS][:3]
    ['raw', 'z', 'corr']

"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_sir.benchmark.data import member_datamodule
from anomalib_sir.benchmark.worker import build_model
from anomalib_sir.data.evaluation import rank_auroc
from anomalib_sir.models.sir.domains import apply_corrections, fit_corrections, z_map

sys.path.insert(0, str(Path(__file__).parent))
from add_domain_lodo import labels_of, merged_rows, open_run, raw_images

#: The design every variant is compared with (the first shipped one: 32 views in all).
BASELINE = "corr+z"


@dataclass(frozen=True)
class Variant:
    """One way of registering a domain."""

    name: str
    ridge: float | None = 0.01
    normalise: str = "pixel"
    views_per_image: bool = False
    diagonal: bool = False
    nearest: str | None = None
    context: int = 1


VARIANTS = (
    Variant("raw", ridge=None, normalise="none"),
    Variant("z", ridge=None),
    Variant("corr", normalise="none"),
    Variant(BASELINE),
    Variant("corr+smooth-z", normalise="smooth"),
    Variant("corr+wide-z", normalise="wide"),
    Variant("corr(0.1)+z", ridge=0.1),
    Variant("corr(0.001)+z", ridge=0.001),
    Variant("corr(1)+z", ridge=1.0),
    Variant("corr(0.1)", ridge=0.1, normalise="none"),
    Variant("diag", normalise="none", diagonal=True),
    Variant("diag+z", diagonal=True),
    Variant("corr+z, 32 views/image", views_per_image=True),
    Variant("corr, 32 views/image", normalise="none", views_per_image=True),
    Variant("corr+smooth-z, 32 views/image", normalise="smooth", views_per_image=True),
    Variant("corr+nearest-z (pixel), 32 views/image", views_per_image=True, nearest="pixel"),
    Variant("corr+nearest-z (score), 32 views/image", views_per_image=True, nearest="score"),
    Variant("corr3x3+z, 32 views/image", views_per_image=True, context=3),
    Variant("corr3x3(0.1)+z, 32 views/image", ridge=0.1, views_per_image=True, context=3),
)


def fit_diagonal_corrections(teacher_features, reconstruction, ridge: float) -> list[torch.Tensor]:
    """Per scale and channel, ``t ≈ a r + b`` (ridge on ``a`` toward 0), as a ``(C + 1, C)`` affine map."""
    corrections = []
    for t, r in zip(teacher_features, reconstruction, strict=True):
        x, y = r.transpose(0, 1).flatten(1).double(), t.transpose(0, 1).flatten(1).double()
        xc, yc = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
        var = (xc * xc).mean(dim=1)
        a = (xc * yc).mean(dim=1) / (var + ridge * var.mean())
        b = y.mean(dim=1) - a * x.mean(dim=1)
        corrections.append(torch.cat([torch.diag(a), b[None]]).float())
    return corrections


def normalised(maps: torch.Tensor, reference: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise the query maps by the reference views' maps."""
    if how == "none":
        return maps
    mean, std = reference.mean(dim=0, keepdim=True), reference.std(dim=0, keepdim=True)
    if how == "wide":
        return (maps - mean) / (std + 3 * std.mean() + 1e-6)
    if how == "smooth":
        mean, std = (F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False) for x in (mean, std))
    return z_map(maps, mean, std)


@torch.no_grad()
def score_variants(sir, references: list[torch.Tensor], queries: dict[str, list[torch.Tensor]]) -> dict:
    """``{variant: {split: scores}}`` for every variant."""
    model, generator = sir.model, sir.model.anomaly_map_generator
    prepared = {
        s: torch.cat([sir.pre_processor.transform(i.unsqueeze(0)) for i in imgs]) for s, imgs in queries.items()
    }
    size = next(iter(prepared.values())).shape[-2:]
    query = {s: model.features_and_reconstruction(x) for s, x in prepared.items()}
    counts = {per_image: sir.DOMAIN_VIEWS * (len(references) if per_image else 1) for per_image in (False, True)}
    views = {n: model.features_and_reconstruction(sir.domain_views(references, n)) for n in set(counts.values())}
    out = {}
    for variant in VARIANTS:
        chosen = views[counts[variant.views_per_image]]
        out[variant.name] = variant_scores(generator, variant, chosen, query, size, len(references))
    if AUTO:
        out["auto"] = out[self_checked(sir, references, size).name]
    return out


def variant_scores(generator, variant: Variant, views, query: dict, size, references: int = 1) -> dict:
    """``{split: scores}`` of the query splits for a domain registered from ``views`` as ``variant`` says.

    View ``i`` is of reference image ``i % references`` (:meth:`Sir.domain_views`).
    """
    vf, vr = views
    corrections = None
    if variant.ridge is not None and variant.diagonal:
        corrections = fit_diagonal_corrections(vf, vr, variant.ridge)
    elif variant.ridge is not None:
        corrections = fit_corrections(vf, vr, variant.ridge, context=variant.context)

    def maps_of(f, r):
        return generator(f, r if corrections is None else apply_corrections(r, corrections), size)

    reference = maps_of(vf, vr)
    if variant.nearest is None or references == 1:
        how = variant.normalise
        return {s: generator.score(normalised(maps_of(f, r), reference, how)) for s, (f, r) in query.items()}
    owner = torch.arange(len(reference)) % references
    out = {}
    for split, (f, r) in query.items():
        maps = maps_of(f, r)
        z = torch.stack([normalised(maps, reference[owner == j], variant.normalise) for j in range(references)])
        pixel = variant.nearest == "pixel"
        out[split] = generator.score(z.amin(dim=0)) if pixel else torch.stack([generator.score(m) for m in z]).amin(0)
    return out


#: Whether ``auto`` (below) is scored too (``--variants`` without it: not).
AUTO = True
#: What ``auto`` chooses from, per domain, by :func:`self_checked`.
AUTO_CANDIDATES = ("z", BASELINE, "corr(1)+z")


def cut_paste(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image with a square patch (15-30 % of its side) of the next image pasted at a random place."""
    out = images.clone()
    height, width = images.shape[-2:]
    for i in range(len(images)):
        side = int(height * (0.15 + 0.15 * torch.rand(1, generator=generator).item()))
        ys, xs, yd, xd = (torch.randint(0, n - side, (1,), generator=generator).item() for n in (height, width) * 2)
        source = images[(i + 1) % len(images)]
        out[i, :, yd : yd + side, xd : xd + side] = source[:, ys : ys + side, xs : xs + side]
    return out


def self_checked(sir, references: list[torch.Tensor], size) -> Variant:
    """Pick the candidate that best tells held-out reference views from cut-paste copies of them (no labels)."""
    model, generator = sir.model, sir.model.anomaly_map_generator
    views = sir.domain_views(references, sir.DOMAIN_VIEWS)
    fit_views, check_views = views[0::2], views[1::2]
    corrupted = cut_paste(check_views, torch.Generator().manual_seed(0))
    query = {
        "clean": model.features_and_reconstruction(check_views),
        "bad": model.features_and_reconstruction(corrupted),
    }
    fitted = model.features_and_reconstruction(fit_views)
    labels = torch.cat([torch.zeros(len(check_views)), torch.ones(len(corrupted))]).long()
    best, best_auroc = None, -1.0
    for variant in (v for v in VARIANTS if v.name in AUTO_CANDIDATES):
        scores = variant_scores(generator, variant, fitted, query, size)
        auroc = rank_auroc(torch.cat([scores["clean"], scores["bad"]]), labels)
        if auroc > best_auroc + 1e-9:
            best, best_auroc = variant, auroc
    return best


def summary(results: pd.DataFrame) -> str:
    """Markdown: per k and variant, mean val/test over held-out datasets (± over draws), wins, worst change."""
    per_seed = results.groupby(["k", "variant", "seed"], sort=False)[["val_AUROC", "test_AUROC"]].mean()
    lines = [
        f"| k | variant | mean val | mean test | draws val > {BASELINE} | worst dataset val change |",
        "|---|---|---|---|---|---|",
    ]
    per_dataset = results.groupby(["k", "variant", "held_out"], sort=False).val_AUROC.mean()
    for (k, variant), group in per_seed.groupby(level=["k", "variant"], sort=False):
        shipped = per_seed.loc[(k, BASELINE)]
        wins = int((group.val_AUROC.droplevel([0, 1]) > shipped.val_AUROC + 1e-9).sum())
        change = (per_dataset.loc[(k, variant)] - per_dataset.loc[(k, BASELINE)]).sort_values()
        lines.append(
            f"| {k} | {variant} | {group.val_AUROC.mean():.3f} ± {group.val_AUROC.std(ddof=0):.3f} "
            f"| {group.test_AUROC.mean():.3f} ± {group.test_AUROC.std(ddof=0):.3f} "
            f"| {wins}/{len(group)} | {change.iloc[0]:+.3f} ({change.index[0]}) |"
        )
    table = results.pivot_table(index=["k", "variant"], columns="held_out", values="val_AUROC", sort=False)
    return (
        "\n".join(lines)
        + "\n\nValidation AUROC per held-out dataset (mean over draws):\n\n"
        + table.round(3).to_markdown()
    )


def write_summary(output: Path, args, results: pd.DataFrame) -> None:
    """Write results.csv and summary.md."""
    results.to_csv(output / "results.csv", index=False)
    seeds = sorted(results.seed.unique().tolist())
    title = f"# What a domain fits ({args.config}, base models of draws {seeds})"
    (output / "summary.md").write_text(f"{title}\n\n{summary(results)}\n")


def main(argv=None) -> int:
    """Score every variant on every saved base model; write results.csv and summary.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--runs", type=Path, nargs="+", default=[], help="add_domain_lodo.py output folders")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="earlier outputs of this script: one summary")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", help=f"only these variants (and {BASELINE}; 'auto' for auto)")
    args = parser.parse_args(argv)
    if args.variants:
        global VARIANTS, AUTO  # one run scores one subset
        VARIANTS = tuple(v for v in VARIANTS if v.name in args.variants or v.name == BASELINE)
        AUTO = "auto" in args.variants
    config, output = open_run(args)
    rows = merged_rows(args.merge)
    if rows:
        write_summary(output, args, pd.DataFrame(rows))
    for run in args.runs:
        for path in sorted((run / "work" / "models").glob("universal_without_*_seed*.pt")):
            held_out, seed = path.stem.removeprefix("universal_without_").rsplit("_seed", 1)
            sir = build_model(config.models["SIR"], config.image_size, config.backbone, 1)
            sir.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            sir.eval()
            for k in args.shots:
                data = member_datamodule(config, held_out, k, int(seed))
                data.setup()
                splits = {"val": data.val_data, "test": data.test_data}
                scores = score_variants(sir, raw_images(data.train_data), {s: raw_images(d) for s, d in splits.items()})
                for variant, by_split in scores.items():
                    row = {"seed": int(seed), "held_out": held_out, "k": k, "variant": variant}
                    for s, d in splits.items():
                        row[f"{s}_AUROC"] = rank_auroc(by_split[s], labels_of(d))
                    rows.append(row)
                print(held_out, seed, k, {r["variant"]: round(r["val_AUROC"], 3) for r in rows[-len(scores) :]})
            write_summary(output, args, pd.DataFrame(rows))
    print((output / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
