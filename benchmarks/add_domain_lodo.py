r"""Leave-one-dataset-out benchmark of ``Sir.add_domain``: a new domain from k normals, without retraining.

For every reference draw (``--seeds``) and every dataset H of the grid in turn:

1. train the universal SIR (the grid's ``SIR`` model with ``Sir()``'s defaults, one-shot) on the *other*
   datasets: repair training, and every training dataset a domain from its own training normal;
2. register H from ``k`` of its normals (``--shots``), and score H's validation and test images against H
   (``add_domain``), next to the same model without domains (``no_domain``: the decoder has never seen H);
3. compare with (a) ``retrain``: the universal SIR trained with those ``k`` normals of H in the mix (scored
   against H's own training domain) and (b) ``patchcore``: the grid's PatchCore fitted on the same ``k``
   normals of H;
4. measure routing: the fraction of all datasets' test images routed to their own domain by the nearest
   prototype, and the fraction flagged "unknown domain" — of H's images before H is added (should be high)
   and of the registered domains' own images (should be low).

Writes ``results.csv`` (one row per seed, held-out dataset, k and method), ``routing.csv``,
``trained_domains.csv`` (every training dataset scored with and without its own domain) and ``summary.md``
to a new folder (``--output``; never overwritten). Validation is reported beside test: nothing here is
chosen on test images.

    python benchmarks/add_domain_lodo.py configs/benchmark.yaml --seeds 0 1 --shots 1 4 \\
        --output docs/results/add-domain-lodo
    python benchmarks/add_domain_lodo.py configs/benchmark.yaml --merge RUN_A RUN_B --output OUT  # one summary

Example:
    >>> summarize(pd.DataFrame([{"seed": 0, "held_out": "a", "k": 1, "method": "retrain",
    ...                          "val_AUROC": 0.7, "test_AUROC": 0.6, "seconds": 10.0}])).splitlines()[2]
    '| a | 1 | retrain | 0.700 ± 0.000 | 0.600 ± 0.000 | 10.0 |'

"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning
import pandas as pd
import torch
from anomalib.callbacks import ModelCheckpoint
from anomalib.engine import Engine

from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.data import member_datamodule
from anomalib_sir.benchmark.worker import build_model
from anomalib_sir.data import UniversalDataModule
from anomalib_sir.data.evaluation import rank_auroc
from anomalib_sir.deploy.predict import fresh_directory

METHODS = ("no_domain", "add_domain", "retrain", "patchcore")
#: The tables a run writes (``NAME.csv``), in the order :func:`write_outputs` takes them.
CSV_TABLES = ("results", "routing", "trained_domains")


def raw_images(dataset) -> list[torch.Tensor]:
    """Read every ``(3, H, W)`` image of a dataset, in ``[0, 1]``."""
    return [dataset[i].image.as_subclass(torch.Tensor) for i in range(len(dataset))]


def labels_of(dataset) -> torch.Tensor:
    """Image labels of a dataset (1 = anomalous)."""
    return torch.tensor(dataset.samples.label_index.astype(int).tolist())


@torch.no_grad()
def scores_of(model, images: Sequence[torch.Tensor], domain: int | None = None, batch: int = 32) -> torch.Tensor:
    """Raw model scores of ``images`` (pre-processed by the model's own transform); ``domain``: explicit route."""
    transform = model.pre_processor.transform
    out = []
    for start in range(0, len(images), batch):
        x = torch.cat([transform(image.unsqueeze(0)) for image in images[start : start + batch]])
        route = None if domain is None else torch.full((len(x),), domain, dtype=torch.long)
        out.append(
            model.model(x, domain=route).pred_score if hasattr(model, "domain_names") else model.model(x).pred_score
        )
    return torch.cat(out)


def own_domain_scores(model, name: str, images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Scores of ``images`` against the model's domain ``name`` (explicit route, as the datamodule gives it)."""
    return scores_of(model, images, model.domain_names.index(name))


def with_new_domain(model, name: str, references, val_images, test_images) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Add domain ``name`` from ``references``; its validation and test scores (routed to it) and the seconds to add."""
    start = time.perf_counter()
    model.add_domain(name, references)
    seconds = time.perf_counter() - start
    index = model.domain_names.index(name)
    return scores_of(model, val_images, index), scores_of(model, test_images, index), seconds


@torch.no_grad()
def routes_of(model, images: Sequence[torch.Tensor], batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest domain of every image and whether it is beyond that domain's radius (unknown)."""
    from anomalib_sir.models.sir.domains import domain_descriptor

    transform, bank = model.pre_processor.transform, model.model.domains
    index, unknown = [], []
    for start in range(0, len(images), batch):
        x = torch.cat([transform(image.unsqueeze(0)) for image in images[start : start + batch]])
        nearest, distance = bank.route(domain_descriptor(model.model.extract_features(x)))
        index.append(nearest)
        unknown.append(distance > bank.radii[nearest])
    return torch.cat(index), torch.cat(unknown)


def train(
    config: BenchmarkConfig, model_name: str, members: list, seed: int, work_dir: Path, shot: int | None, init_seed=None
):
    """Train the grid's ``model_name`` on a union of member datamodules (or one member); return it and seconds.

    ``init_seed``: the global seed of the weights and augmentations, if not the draw's ``seed``.
    """
    spec = config.models[model_name]
    datamodule = members[0] if len(members) == 1 else UniversalDataModule(members, seed=seed, num_workers=0)
    datamodule.train_batch_size = int(spec.train_batch_size or config.train_batch_size)
    lightning.seed_everything(seed if init_seed is None else init_seed, workers=True, verbose=False)  # weights too
    model = build_model(spec, config.image_size, config.backbone, shot)
    engine = Engine(
        default_root_dir=work_dir,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=work_dir / "ckpt", save_top_k=0, save_last=False)],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **dict(spec.trainer),
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    return model.eval(), time.perf_counter() - start


def open_run(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path]:
    """Start a domain benchmark: quiet logs, ``--threads``, the grid ``config``, a new ``--output`` folder."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    return BenchmarkConfig.from_yaml(args.config), fresh_directory(args.output)


def merged_rows(runs: Sequence[Path]) -> list[dict]:
    """Return the ``results.csv`` rows of earlier runs (``--merge``), in order."""
    return [row for run in runs for row in pd.read_csv(run / "results.csv").to_dict("records")]


def auroc_row(seed, held_out, k, method, scores_val, scores_test, val, test, seconds) -> dict:
    """One results row."""
    return {
        "seed": seed,
        "held_out": held_out,
        "k": k,
        "method": method,
        "val_AUROC": rank_auroc(scores_val, labels_of(val)),
        "test_AUROC": rank_auroc(scores_test, labels_of(test)),
        "seconds": seconds,
    }


def run_held_out(config: BenchmarkConfig, seed: int, held_out: str, shots: Sequence[int], work: Path, all_in_one: dict):
    """All methods for one seed and one held-out dataset; return result, routing and trained-domain rows.

    Trained-domain rows: each training dataset scored with and without its own domain (registered from its
    one training normal), which says what domain scoring does where the decoder saw the domain.

    ``all_in_one`` caches, per seed, the k=1 retrained model (every dataset one-shot: the same for every H).
    """
    names = list(config.datasets)
    others = [n for n in names if n != held_out]
    data = {n: member_datamodule(config, n, 1, seed) for n in names}
    for dm in data.values():
        dm.setup()
    tests = {n: raw_images(data[n].test_data) for n in names}
    tests_ds = {n: data[n].test_data for n in names}
    base, base_s = train(config, "SIR", [member_datamodule(config, n, 1, seed) for n in others], seed, work, 1)
    (work / "models").mkdir(parents=True, exist_ok=True)
    torch.save(base.state_dict(), work / "models" / f"universal_without_{held_out}_seed{seed}.pt")
    h_val, h_test = data[held_out].val_data, data[held_out].test_data
    h_val_images = raw_images(h_val)
    trained = []
    for name in others:
        val_images, test_images = raw_images(data[name].val_data), tests[name]
        plain = _without_domains(base, val_images), _without_domains(base, test_images)
        scored = own_domain_scores(base, name, val_images), own_domain_scores(base, name, test_images)
        for method, (val_scores, test_scores) in (("no_domain", plain), ("add_domain", scored)):
            row = auroc_row(
                seed, held_out, 1, method, val_scores, test_scores, data[name].val_data, tests_ds[name], 0.0
            )
            trained.append({**row, "dataset": name})
    in_domain = torch.cat([routes_of(base, tests[n])[1] for n in others]).float().mean().item()
    before = routes_of(base, tests[held_out])[1].float().mean().item()
    rows, routing = [], []
    for k in shots:
        held = member_datamodule(config, held_out, k, seed)
        held.setup()
        references = raw_images(held.train_data)
        if k == shots[0]:
            rows.append(
                auroc_row(
                    seed,
                    held_out,
                    k,
                    "no_domain",
                    _without_domains(base, h_val_images),
                    _without_domains(base, tests[held_out]),
                    h_val,
                    h_test,
                    base_s,
                )
            )
        val_scores, test_scores, add_s = with_new_domain(base, held_out, references, h_val_images, tests[held_out])
        rows.append(auroc_row(seed, held_out, k, "add_domain", val_scores, test_scores, h_val, h_test, add_s))
        correct, total, unknown = 0, 0, []
        for name in names:
            nearest, flagged = routes_of(base, tests[name])
            correct += int((nearest == base.domain_names.index(name)).sum())
            total += len(nearest)
            unknown.append(flagged)
        routing.append(
            {
                "seed": seed,
                "held_out": held_out,
                "k": k,
                "routing_accuracy": correct / total,
                "unknown_rate_registered": torch.cat(unknown).float().mean().item(),
                "unknown_rate_before_add_held_out": before,
                "unknown_rate_before_add_others": in_domain,
            }
        )
        base.remove_domain(held_out)
        if k == 1 and seed in all_in_one:
            retrained, retrain_s = all_in_one[seed]
        else:
            members = [member_datamodule(config, n, 1, seed) for n in others]
            members.append(member_datamodule(config, held_out, k, seed))
            retrained, retrain_s = train(config, "SIR", members, seed, work, 1)
            if k == 1:
                all_in_one[seed] = retrained, retrain_s
        rows.append(
            auroc_row(
                seed,
                held_out,
                k,
                "retrain",
                own_domain_scores(retrained, held_out, h_val_images),
                own_domain_scores(retrained, held_out, tests[held_out]),
                h_val,
                h_test,
                retrain_s,
            )
        )
        patchcore, patchcore_s = train(config, "PatchCore", [held], seed, work, k)
        rows.append(
            auroc_row(
                seed,
                held_out,
                k,
                "patchcore",
                scores_of(patchcore, h_val_images),
                scores_of(patchcore, tests[held_out]),
                h_val,
                h_test,
                patchcore_s,
            )
        )
        logging.getLogger(__name__).warning("seed %d, %s, k=%d: %s", seed, held_out, k, rows[-4:])
    return rows, routing, trained


def _without_domains(model, images) -> torch.Tensor:
    """Scores of the model with its domains set aside (the raw reconstruction map)."""
    saved = model.model.domains.state_dict()
    names = model.domain_names
    for name in names:
        model.remove_domain(name)
    try:
        return scores_of(model, images)
    finally:
        model.model.domains.load_state_dict(saved)


def rescore(config: BenchmarkConfig, run: Path, shots: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recompute the ``add_domain`` rows of an earlier run from its saved base models (no training).

    The other rows (``no_domain``, ``retrain``, ``patchcore``) are kept (the retrained models are not saved).
    For a change of what ``add_domain`` fits: ``--rescore RUN`` takes minutes instead of an hour.
    """
    results, trained = pd.read_csv(run / "results.csv"), pd.read_csv(run / "trained_domains.csv")
    rows, trained_rows = [], []
    for (seed, held_out), _ in results.groupby(["seed", "held_out"], sort=False):
        base = build_model(config.models["SIR"], config.image_size, config.backbone, 1)
        path = run / "work" / "models" / f"universal_without_{held_out}_seed{seed}.pt"
        base.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        base.eval()
        for name in [n for n in config.datasets if n != held_out]:
            data = member_datamodule(config, name, 1, int(seed))
            data.setup()
            val_scores = own_domain_scores(base, name, raw_images(data.val_data))
            test_scores = own_domain_scores(base, name, raw_images(data.test_data))
            row = auroc_row(seed, held_out, 1, "add_domain", val_scores, test_scores, data.val_data, data.test_data, 0)
            trained_rows.append({**row, "dataset": name})
        for k in shots:
            held = member_datamodule(config, held_out, k, int(seed))
            held.setup()
            val_scores, test_scores, seconds = with_new_domain(
                base, held_out, raw_images(held.train_data), raw_images(held.val_data), raw_images(held.test_data)
            )
            rows.append(
                auroc_row(
                    seed, held_out, k, "add_domain", val_scores, test_scores, held.val_data, held.test_data, seconds
                )
            )
            base.remove_domain(held_out)
    new = pd.concat([results[results.method != "add_domain"], pd.DataFrame(rows)], ignore_index=True)
    new_trained = pd.concat([trained[trained.method != "add_domain"], pd.DataFrame(trained_rows)], ignore_index=True)
    return new, new_trained


def summarize(results: pd.DataFrame) -> str:
    """Markdown: per held-out dataset, k and method, mean ± std over seeds (val, test) and mean seconds."""
    grouped = results.groupby(["held_out", "k", "method"], sort=False)
    lines = ["| held-out | k | method | val AUROC | test AUROC | seconds |", "|---|---|---|---|---|---|"]
    for (held_out, k, method), group in grouped:
        val, test = group.val_AUROC, group.test_AUROC
        lines.append(
            f"| {held_out} | {k} | {method} | {val.mean():.3f} ± {val.std(ddof=0):.3f} "
            f"| {test.mean():.3f} ± {test.std(ddof=0):.3f} | {group.seconds.mean():.1f} |"
        )
    return "\n".join(lines)


def trained_table(trained: pd.DataFrame) -> str:
    """Markdown: per training dataset, AUROC without and with its domain (mean over seeds and base models)."""
    table = trained.pivot_table(index="dataset", columns="method", values=["val_AUROC", "test_AUROC"], aggfunc="mean")
    lines = [
        "| dataset | val: no domain | val: own domain | test: no domain | test: own domain |",
        "|---|---|---|---|---|",
    ]
    for dataset, row in table.iterrows():
        values = [
            row[(split, method)] for split in ("val_AUROC", "test_AUROC") for method in ("no_domain", "add_domain")
        ]
        lines.append(f"| {dataset} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def mean_table(results: pd.DataFrame) -> str:
    """Markdown: mean over held-out datasets per k and method (val, test), per seed then over seeds."""
    per_seed = results.groupby(["k", "method", "seed"])[["val_AUROC", "test_AUROC"]].mean().reset_index()
    lines = ["| k | method | mean val AUROC | mean test AUROC |", "|---|---|---|---|"]
    for (k, method), group in per_seed.groupby(["k", "method"], sort=False):
        lines.append(
            f"| {k} | {method} | {group.val_AUROC.mean():.3f} ± {group.val_AUROC.std(ddof=0):.3f} "
            f"| {group.test_AUROC.mean():.3f} ± {group.test_AUROC.std(ddof=0):.3f} |"
        )
    return "\n".join(lines)


def write_outputs(output: Path, args, results: pd.DataFrame, routing: pd.DataFrame, trained: pd.DataFrame) -> None:
    """Write results.csv, routing.csv, trained_domains.csv and summary.md."""
    results.to_csv(output / "results.csv", index=False)
    routing.to_csv(output / "routing.csv", index=False)
    trained.to_csv(output / "trained_domains.csv", index=False)
    seeds = sorted(results.seed.unique().tolist())
    summary = [
        f"# add_domain, leave one dataset out ({args.config}, seeds {seeds}, k {sorted(results.k.unique().tolist())})",
        "",
        mean_table(results),
        "",
        summarize(results),
        "",
        "## Training datasets scored with their own domain (one training normal each)",
        "",
        trained_table(trained),
        "",
        "## Routing (nearest prototype, all datasets' test images)",
        "",
        routing.groupby("k").mean(numeric_only=True).drop(columns="seed").round(3).to_markdown(),
    ]
    (output / "summary.md").write_text("\n".join(summary) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write results.csv, routing.csv and summary.md to a new folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="benchmark grid YAML (its datasets and its SIR / PatchCore models)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--held-out", nargs="*", default=None, help="only these datasets (default: every one)")
    parser.add_argument("--output", required=True, help="new folder for results.csv, routing.csv, summary.md")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rescore", type=Path, help="earlier run folder: recompute its add_domain rows only")
    parser.add_argument("--merge", type=Path, nargs="+", help="earlier run folders (other seeds): one summary of all")
    args = parser.parse_args(argv)
    config, output = open_run(args)
    if args.rescore:
        results, trained = rescore(config, args.rescore, args.shots)
        write_outputs(output, args, results, pd.read_csv(args.rescore / "routing.csv"), trained)
    if args.merge:
        tables = [pd.concat([pd.read_csv(run / f"{t}.csv") for run in args.merge]) for t in CSV_TABLES]
        write_outputs(output, args, *tables)
    rows, routing, trained_rows, all_in_one = [], [], [], {}
    for seed in args.seeds if not (args.rescore or args.merge) else []:
        for held_out in args.held_out or list(config.datasets):
            new_rows, new_routing, new_trained = run_held_out(
                config, seed, held_out, args.shots, output / "work", all_in_one
            )
            rows += new_rows
            routing += new_routing
            trained_rows += new_trained
            write_outputs(output, args, pd.DataFrame(rows), pd.DataFrame(routing), pd.DataFrame(trained_rows))
    print((output / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
