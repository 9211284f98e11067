r"""Issue 19 levers that use the reference normal itself: per-dataset error statistics, repair training.

For every reference draw (``--seeds``) this trains the grid's ``SIR`` one-shot, universal (one model on every
dataset's training normal) and specialised (one model per dataset), each in three ways:

* ``plain``: ``Sir(repair=False)`` (``Sir()`` before issue 19's levers were adopted);
* ``fine-shallow``: teacher resolution per stage: the shallow stage from a ``FINE_IMAGE_SIZE`` input, the
  deeper one from the grid's ``image_size`` (finer maps for small lesions; the decoder's grid is unchanged);
* ``repair``: ``Sir(repair=True)``: per view with probability ``Sir.REPAIR_PROBABILITY`` one box (10-40 % of
  the side) blended with a box of another view (alpha 0.3-1) or contrast/brightness-shifted, the target being
  the teacher features of the *clean* view (:mod:`anomalib_sir.models.sir.repair`).
* ``stages123``, ``stages234``, ``noise0.5``, ``loops1`` (``ARGUMENTS``): ``Sir()``'s training (repair only in
  the universal model) with other teacher stages (Lite0 strides 4/8/16 or 8/16/32 instead of 8/16), noise 0.5
  instead of 0.2, or one loop instead of three;
* ``repair-*`` (``REPAIRS``): ``Sir()``'s training with another repair corruption: probability per view, box
  size range, donor blend or intensity shift only (the universal model; ``repair-intensity`` the specialised
  ones too, where a donor would be the reference itself).

Every trained model then scores each dataset's validation and test images in the ways of ``SCORINGS``, all
from the dataset's own training normal (``Sir.domain_views``: the image and seeded augmented views):

* ``raw``: the model's own score (the baseline of the rule);
* ``own-z``: the per-pixel z-map of the reference views' error maps, the dataset's own statistics (in the
  universal model: not pooled over datasets, the failure of the pooled z-map lever);
* ``own-corr+z``: what ``Sir.add_domain`` fitted before issue 20's sixth round (per-position affine correction
  of the reconstruction, ridge 0.01, + z-map); ``own-corr3x3+z``: what it fits now (3x3 correction, ridge 0.1);
* ``own-|z|``: the two-sided z-map (places reconstructed much *better* than in the reference count too);
* ``global``: no map at all: the cosine distance of the image's style descriptor (per-channel mean and spread
  of every teacher scale, the domain prototype's descriptor) to the reference views' mean descriptor
  (global changes such as blur or diffuse opacity, which a reconstruction reproduces well);
* ``raw+global``, ``own-z+global``, ``own-corr+z+global``: the map score plus ``global``, each in units of
  the reference views' own scores (mean 0, spread 1 over the views): a fusion with no weight to choose;
* ``own-z/<pooling>`` (``POOLINGS``): the own-z map made or pooled otherwise: the top-k fraction of the image
  score, the max, the smoothing, one teacher scale only, z per scale before fusion, mirror test-time
  averaging (the map choices made on two datasets, measured again on five).

Validation chooses (``benchmarks/adoption_rule.py`` reads ``results.csv``: the ``model`` column is
``SIR`` for the baseline and ``SIR+<training>/<scoring>`` otherwise; ``SIR+adopted`` is today's ``Sir()``
and ``SIR+adopted/<pooling>`` its pooling variants); test is reported.

    python benchmarks/reference_levers.py configs/benchmark.yaml --seeds 0 1 2 3 4 --output OUT
    python benchmarks/reference_levers.py configs/benchmark.yaml --merge OUT_A OUT_B --output OUT  # one table
    python benchmarks/reference_levers.py configs/benchmark.yaml --rescore OUT_A --output OUT  # saved models

Example:
    >>> [s.name for s in SCORINGS][:8]
    ['raw', 'own-z', 'own-corr+z', 'own-corr3x3+z', 'own-|z|', 'global', 'raw+global', 'own-z+global']
    >>> [s.name for s in SCORINGS][9:12]
    ['own-z/top1%', 'own-z/top5%', 'own-z/top20%']

"""

from __future__ import annotations

import argparse
import sys
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_sir import Sir
from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.data import member_datamodule
from anomalib_sir.benchmark.worker import build_model
from anomalib_sir.data.evaluation import rank_auroc
from anomalib_sir.models.sir import repair
from anomalib_sir.models.sir.anomaly_map import SirAnomalyMapGenerator
from anomalib_sir.models.sir.torch_model import standardize_images

sys.path.insert(0, str(Path(__file__).parent))
from add_domain_lodo import labels_of, merged_rows, open_run, raw_images, train
from domain_variants import Variant, normalised, variant_scores


@dataclass(frozen=True)
class Pooling:
    """How the own-z map is made and pooled, where it differs from the model's (``None``: the model's value).

    ``scales``: the teacher scales fused (indices into ``layers``); ``per_scale_z``: each scale's smoothed map
    in units of its own reference spread before the scales are averaged (instead of z after fusion);
    ``flip``: the z-maps of the image and of its mirror image (mirrored back) averaged; ``groups``: each group of
    scales scored on its own (its own-z map and top-k), in units of the reference views' scores of that group
    (mean 0, spread 1), then summed (``combine="sum"``) or the largest taken (``"max"``): a deep scale's global
    signal added to the fine scales' focal one instead of averaged into their map. ``feature_norm``: teacher
    features and reconstructions moved into the reference's own feature frame before the cosine (``"centre"``:
    minus the reference views' per-channel mean; ``"standardise"``: also divided by their per-channel spread),
    so the cosine weighs how a feature departs from the reference's typical one, not its shared offset.
    ``loop_mean``: the maps of every loop's reconstruction averaged (not the last loop's alone). ``views``: the
    reference's error statistics from this many augmented views (``Sir.DOMAIN_VIEWS`` per image otherwise).
    """

    sigma: float | None = None
    score_mode: str = "topk"
    topk_ratio: float | None = None
    scales: tuple[int, ...] | None = None
    per_scale_z: bool = False
    flip: bool = False
    groups: tuple[tuple[int, ...], ...] | None = None
    combine: str = "sum"
    feature_norm: str | None = None
    loop_mean: bool = False
    views: int | None = None

    def deepest(self) -> int:
        """Return the deepest scale index the pooling reads (``-1``: the model's own scales)."""
        picked = [*(self.scales or ()), *(i for g in self.groups or () for i in g)]
        return max(picked, default=-1)


@dataclass(frozen=True)
class Scoring:
    """One way of scoring a dataset with a trained model and the dataset's own reference views."""

    name: str
    variant: Variant | None
    two_sided: bool = False
    global_term: bool = False
    pooling: Pooling | None = None


#: Issue 19's third round: the map and score choices of the two-dataset era, on the own-z map of today (each
#: ``None`` field is the model's own value: since that round, top-40 %, sigma 4, both scales, no mirror).
POOLINGS = {
    "top1%": Pooling(topk_ratio=0.01),
    "top5%": Pooling(topk_ratio=0.05),
    "top20%": Pooling(topk_ratio=0.2),
    "top30%": Pooling(topk_ratio=0.3),
    "top40%": Pooling(topk_ratio=0.4),
    "top50%": Pooling(topk_ratio=0.5),
    "mean": Pooling(topk_ratio=1.0),
    "max": Pooling(score_mode="max"),
    "sigma2": Pooling(sigma=2.0),
    "sigma8": Pooling(sigma=8.0),
    "stride8": Pooling(scales=(0,)),
    "stride16": Pooling(scales=(1,)),
    "scale-z": Pooling(per_scale_z=True),
    "flip": Pooling(flip=True),
    # sixth round: the cosine in the reference's own feature frame (per dataset, from its reference views)
    "centred": Pooling(feature_norm="centre"),
    "standardised": Pooling(feature_norm="standardise"),
    "loop-mean": Pooling(loop_mean=True),
    "views8": Pooling(views=8),
    "views128": Pooling(views=128),
    # fifth round, on three-stage models (``stages234``: strides 8/16/32): the deep stage scored apart
    "scales01": Pooling(scales=(0, 1)),
    "scale2": Pooling(scales=(2,)),
    "scales01+scale2": Pooling(groups=((0, 1), (2,))),
    "max(scales01,scale2)": Pooling(groups=((0, 1), (2,)), combine="max"),
    "scale0+scale1+scale2": Pooling(groups=((0,), (1,), (2,))),
    "scale0+scale1": Pooling(groups=((0,), (1,))),
}
SCORINGS = (
    Scoring("raw", Variant("raw", ridge=None, normalise="none")),
    Scoring("own-z", Variant("z", ridge=None)),
    Scoring("own-corr+z", Variant("corr+z")),
    Scoring("own-corr3x3+z", Variant("corr3x3(0.1)+z", ridge=0.1, context=3)),
    Scoring("own-|z|", Variant("z", ridge=None), two_sided=True),
    Scoring("global", None),
    Scoring("raw+global", Variant("raw", ridge=None, normalise="none"), global_term=True),
    Scoring("own-z+global", Variant("z", ridge=None), global_term=True),
    Scoring("own-corr+z+global", Variant("corr+z"), global_term=True),
    *(Scoring(f"own-z/{name}", None, pooling=pooling) for name, pooling in POOLINGS.items()),
)
#: Issue 19's fourth round: ``Sir()`` arguments chosen on two datasets, trained as ``Sir()`` trains (repair only
#: in the universal model) with another value: the teacher stages (Lite0 strides 4/8/16 or 8/16/32 instead of
#: 8/16), the noise on the first loop's fused map (0.2), the loops (3).
ARGUMENTS = {
    "stages123": {"layers": [1, 2, 3]},
    "stages234": {"layers": [2, 3, 4]},
    "noise0.5": {"noise_std": 0.5},
    "loops1": {"loops": 1},
}


@dataclass(frozen=True)
class RepairVariant:
    """Repair training other than ``Sir()``'s (``repair.py``'s constants and ``Sir.REPAIR_PROBABILITY``).

    ``specialized``: the specialised models are trained with it too (``Sir()`` trains them without repair).
    """

    probability: float = Sir.REPAIR_PROBABILITY
    size: tuple[float, float] = repair.REPAIR_SIZE
    blend_share: float = repair.REPAIR_BLEND_SHARE
    specialized: bool = False


#: Issue 19's fourth round: the corruption's probability per view, its size range and its kind.
REPAIRS = {
    "repair-p25": RepairVariant(probability=0.25),
    "repair-p100": RepairVariant(probability=1.0),
    "repair-small": RepairVariant(size=(0.05, 0.2)),
    "repair-large": RepairVariant(size=(0.2, 0.6)),
    "repair-xl": RepairVariant(size=(0.3, 0.8)),
    "repair-blend": RepairVariant(blend_share=1.0),
    "repair-intensity": RepairVariant(blend_share=0.0, specialized=True),
}
#: Issue 19's sixth round: ``Sir()``'s training with other initial weights and augmentations (global seed
#: ``INIT_SEED_OFFSET`` + draw; same reference images): alone, it measures how much one training's luck moves
#: a cell; averaged with the ``ADOPTED`` model (``--ensemble``), a two-decoder ensemble.
INIT_SEED_OFFSET = 1000
RESEEDED = {"init2": INIT_SEED_OFFSET}
TRAININGS = ("plain", "repair", "fine-shallow", *ARGUMENTS, *REPAIRS, *RESEEDED)
#: ``fine-shallow``: input size of the shallow teacher stage (the deeper ones keep the grid's ``image_size``).
FINE_IMAGE_SIZE = 256


@torch.no_grad()
def scorings_of(sir: Sir, references: list[torch.Tensor], prepared: dict[str, torch.Tensor]) -> dict:
    """``{scoring: {split: scores}}`` of one dataset's pre-processed splits, from its ``references``."""
    model, generator = sir.model, sir.model.anomaly_map_generator
    size = next(iter(prepared.values())).shape[-2:]
    query = {s: model.features_and_reconstruction(x) for s, x in prepared.items()}
    views = model.features_and_reconstruction(sir.domain_views(references))
    query[VIEWS] = views
    distances = global_distances(views, query)
    out = {}
    flips = any(s.pooling is not None and s.pooling.flip for s in SCORINGS)
    flipped = {s: model.features_and_reconstruction(x.flip(-1)) for s, x in prepared.items()} if flips else {}
    looped = {}
    if any(s.pooling is not None and s.pooling.loop_mean for s in SCORINGS):
        looped = {s: every_loop(model, x) for s, x in prepared.items()}
        looped[VIEWS] = every_loop(model, sir.domain_views(references))
    for scoring in SCORINGS:
        if scoring.pooling is not None and scoring.pooling.deepest() >= len(views[0]):
            continue  # a scale the model does not have
        if scoring.pooling is not None and scoring.pooling.groups is not None:
            scores = grouped_scores(generator, scoring.pooling, views, query, flipped, size)
        elif scoring.pooling is not None and scoring.pooling.views is not None:
            counted = model.features_and_reconstruction(sir.domain_views(references, scoring.pooling.views))
            scores = pooled_scores(generator, scoring.pooling, counted, query, flipped, size)
        elif scoring.pooling is not None and scoring.pooling.loop_mean:
            scores = pooled_scores(generator, scoring.pooling, looped[VIEWS], looped, {}, size)
        elif scoring.pooling is not None:
            scores = pooled_scores(generator, scoring.pooling, views, query, flipped, size)
        elif scoring.two_sided:
            scores = two_sided_scores(generator, views, query, size)
        elif scoring.variant is None:
            scores = distances
        else:
            scores = variant_scores(generator, scoring.variant, views, query, size)
        if scoring.global_term:
            scores = {s: standardized(scores, s) + standardized(distances, s) for s in scores}
        out[scoring.name] = {s: v for s, v in scores.items() if s != VIEWS}
    return out


#: The reference views' own scores travel with the query splits under this key (they scale the fusions).
VIEWS = "views"


def pooled_scores(generator, pooling: Pooling, views, query: dict, flipped: dict, size) -> dict:
    """``{split: scores}`` of the own-z map made and pooled as ``pooling`` says (``flipped``: mirrored queries)."""
    made = SirAnomalyMapGenerator(
        sigma=generator.sigma if pooling.sigma is None else pooling.sigma,
        score_mode=pooling.score_mode,
        topk_ratio=pooling.topk_ratio or generator.topk_ratio,
    )

    frame = feature_frame(views[0], pooling.feature_norm)

    def picked(features):
        features = [(f - mean) / spread for f, (mean, spread) in zip(features, frame, strict=True)]
        return features if pooling.scales is None else [features[i] for i in pooling.scales]

    def maps_of(features, reconstruction) -> list[torch.Tensor]:
        if pooling.loop_mean:  # ``reconstruction``: every loop's
            per_loop = [maps_of_loop(features, r) for r in reconstruction]
            return [torch.stack(maps).mean(dim=0) for maps in zip(*per_loop, strict=True)]
        return maps_of_loop(features, reconstruction)

    def maps_of_loop(features, reconstruction) -> list[torch.Tensor]:
        maps = made.scale_maps(picked(features), picked(reconstruction), size)
        return [made.blur(m) for m in maps] if pooling.per_scale_z else [made.fuse(maps)]

    reference = maps_of(*views)

    def z_of(features, reconstruction) -> torch.Tensor:
        maps = maps_of(features, reconstruction)
        return torch.stack([normalised(m, r, "pixel") for m, r in zip(maps, reference, strict=True)]).mean(dim=0)

    scores = {}
    for split, (f, r) in query.items():
        z = z_of(f, r)
        if pooling.flip and split in flipped:
            z = (z + z_of(*flipped[split]).flip(-1)) / 2
        scores[split] = made.score(z)
    return scores


@torch.no_grad()
def every_loop(model, images: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Teacher features and every loop's reconstruction (per loop, per scale) of pre-processed images, in chunks."""
    chunks = [model.extract_features(chunk) for chunk in images.split(model.DOMAIN_BATCH_SIZE)]
    loops = [model.reconstruct(features) for features in chunks]
    features = [torch.cat(scale) for scale in zip(*chunks, strict=True)]
    per_loop = [[torch.cat(scale) for scale in zip(*(c[i] for c in loops), strict=True)] for i in range(model.loops)]
    return features, per_loop


def feature_frame(features, how: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per scale, the ``(1, C, 1, 1)`` offset and scale of the reference frame ``how`` names (``None``: 0 and 1).

    Example:
        >>> views = [torch.randn(4, 3, 8, 8) * 2 + 5]
        >>> [(round(m.mean().item()), round(s.mean().item())) for m, s in feature_frame(views, "standardise")]
        [(5, 2)]
        >>> [(m.item(), s.item()) for m, s in feature_frame(views, None)]
        [(0.0, 1.0)]

    """
    frame = []
    for f in features:
        mean = f.mean(dim=(0, 2, 3), keepdim=True) if how else f.new_zeros(1, 1, 1, 1)
        spread = f.std(dim=(0, 2, 3), keepdim=True) + 1e-6 if how == "standardise" else f.new_ones(1, 1, 1, 1)
        frame.append((mean, spread))
    return frame


def grouped_scores(generator, pooling: Pooling, views, query: dict, flipped: dict, size) -> dict:
    """``{split: scores}``: each group of ``pooling.groups`` scored apart, standardised on the views, combined."""
    parts = [
        pooled_scores(generator, replace(pooling, scales=group, groups=None), views, query, flipped, size)
        for group in pooling.groups
    ]
    combined = {}
    for split in query:
        stacked = torch.stack([standardized(part, split) for part in parts])
        combined[split] = stacked.sum(dim=0) if pooling.combine == "sum" else stacked.amax(dim=0)
    return combined


def global_distances(views, query: dict) -> dict:
    """Cosine distance of each image's :func:`domain_descriptor` to the reference views' prototype."""
    from anomalib_sir.models.sir.domains import domain_descriptor

    prototype = torch.nn.functional.normalize(domain_descriptor(views[0]).mean(dim=0, keepdim=True), dim=1)
    return {s: 1 - (domain_descriptor(f) @ prototype.T).squeeze(1) for s, (f, _) in query.items()}


def standardized(scores: dict, split: str) -> torch.Tensor:
    """Scores of ``split`` in units of the reference views' own scores (mean 0, spread 1 on the views)."""
    reference = scores[VIEWS]
    return (scores[split] - reference.mean()) / (reference.std() + 1e-12)


def two_sided_scores(generator, views, query: dict, size) -> dict:
    """Top-k of ``|z|``: the reference views' per-pixel z-map, deviations in both directions."""
    reference = generator(*views, size)
    z_maps = {s: normalised(generator(f, r, size), reference, "pixel") for s, (f, r) in query.items()}
    return {s: generator.score(z.abs()) for s, z in z_maps.items()}


_PREPARED: dict[str, dict[str, torch.Tensor]] = {}


def prepared_splits(sir: Sir, name: str, splits: dict) -> dict[str, torch.Tensor]:
    """Pre-processed validation/test images of dataset ``name``, read once (the same in every draw)."""
    key = f"{name}@{tuple(sir.input_size)}"
    if key not in _PREPARED:
        transform = sir.pre_processor.transform
        _PREPARED[key] = {
            s: torch.cat([transform(image.unsqueeze(0)) for image in raw_images(d)]) for s, d in splits.items()
        }
    return _PREPARED[key]


class FineShallowSir(Sir):
    """``Sir`` whose shallowest teacher stage sees the image at ``FINE_IMAGE_SIZE``, the deeper ones at half that.

    The pre-processor resizes to ``FINE_IMAGE_SIZE``; the deeper stages come from a 2x downsampled copy, so
    the fused map and the decoder keep the grid's size and only the shallow stage (and the map) gets finer.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model.extract_features = types.MethodType(_fine_shallow_features, self.model)


class RepairVariantSir(Sir):
    """``Sir`` trained with the repair corruption of ``REPAIRS[variant]`` (the module constants, while it trains)."""

    def __init__(self, variant: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.variant = REPAIRS[variant]
        self.REPAIR_PROBABILITY = self.variant.probability

    def on_fit_start(self) -> None:
        """``Sir``'s, then the variant's corruption constants."""
        super().on_fit_start()
        repair.REPAIR_SIZE, repair.REPAIR_BLEND_SHARE = self.variant.size, self.variant.blend_share

    def on_fit_end(self) -> None:
        """Restore the module's constants (``RepairVariant``'s defaults are ``repair.py``'s own values)."""
        default = RepairVariant()
        repair.REPAIR_SIZE, repair.REPAIR_BLEND_SHARE = default.size, default.blend_share
        super().on_fit_end()


def _fine_shallow_features(model, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        images = standardize_images(images)
        coarse = F.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        fine_features, coarse_features = model.teacher(images), model.teacher(coarse)
        return [fine_features[0].float(), *(f.float() for f in coarse_features[1:])]


def model_spec(config: BenchmarkConfig, training: str, setting: str):
    """Return the grid's SIR spec as ``training`` trains it in ``setting`` (this script scores: no training domains).

    Example:
        >>> grid = BenchmarkConfig.from_yaml(Path(__file__).parents[1] / "configs" / "benchmark.yaml")
        >>> spec = model_spec(grid, "stages234", "universal")
        >>> spec.init_args["repair"], spec.init_args["layers"]
        (True, [2, 3, 4])

    """
    spec = config.models["SIR"]
    universal = setting == "universal"
    if training in REPAIRS:
        repairs = universal or REPAIRS[training].specialized
    else:
        repairs = universal if training in {*ARGUMENTS, *RESEEDED} else training == "repair"
    init_args = {**spec.init_args, "repair": repairs, "training_domains": False}
    init_args |= ARGUMENTS.get(training, {})
    class_path = {"fine-shallow": "reference_levers.FineShallowSir"}.get(training, spec.class_path)
    if training in REPAIRS:
        class_path, init_args["variant"] = "reference_levers.RepairVariantSir", training
    return replace(spec, class_path=class_path, init_args=init_args)


def grid_of(config: BenchmarkConfig, training: str) -> BenchmarkConfig:
    """Return the grid as ``training`` trains and scores it (``fine-shallow``: images at ``FINE_IMAGE_SIZE``)."""
    return replace(config, image_size=FINE_IMAGE_SIZE) if training == "fine-shallow" else config


def run_seed(config: BenchmarkConfig, seed: int, work: Path, settings: list[str], trainings: list[str]) -> list[dict]:
    """Every training x setting x dataset x scoring row of one reference draw (models saved under ``work``)."""
    rows = []
    for training in trainings:
        for setting in settings:
            if training in REPAIRS and setting == "specialized" and not REPAIRS[training].specialized:
                continue  # trained as ``plain``: the baseline's own specialised models
            config.models[f"SIR/{training}"] = model_spec(config, training, setting)
            for group in groups_of(config, setting):
                members = [member_datamodule(config, n, 1, seed) for n in group]
                for m in members:
                    m.setup()
                grid = grid_of(config, training)
                init_seed = seed + RESEEDED[training] if training in RESEEDED else None
                work_dir = work / f"{training}_{setting}"
                sir, seconds = train(grid, f"SIR/{training}", members, seed, work_dir, 1, init_seed)
                torch.save(sir.state_dict(), work / f"{training}_{setting}_{'+'.join(group)}.pt")
                rows += score_model(sir, members, seed, training, setting, seconds)
    return rows


def rescore(config: BenchmarkConfig, run: Path) -> list[dict]:
    """Score every model a run saved with today's ``SCORINGS`` (no training; ``train_s`` from the run)."""
    seconds = pd.read_csv(run / "results.csv").groupby(["seed", "setting", "dataset"]).train_s.first()
    rows = []
    for path in sorted(run.glob("work/seed*/*.pt")):
        seed = int(path.parent.name.removeprefix("seed"))
        training, setting, joined = path.stem.split("_", 2)
        group = joined.split("+")
        spec = model_spec(config, training, setting)
        sir = build_model(spec, grid_of(config, training).image_size, config.backbone, 1)
        sir.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        members = [member_datamodule(config, n, 1, seed) for n in group]
        for m in members:
            m.setup()
        rows += score_model(sir.eval(), members, seed, training, setting, seconds.get((seed, setting, group[0])))
    return rows


def ensemble(config: BenchmarkConfig, adopted: list[Path], reseeded: Path) -> list[dict]:
    """Rows of two-decoder ensembles: each ``init2`` model of ``reseeded`` with its ``ADOPTED`` twin of ``adopted``.

    ``SIR+ensemble2/own-z``: each model makes its own-z map (its own reference views' statistics), the two
    z-maps averaged; ``SIR+ensemble2/raw-mean``: the two raw maps averaged, then one z-map of that mean map;
    ``SIR+ensemble2/feature-mean``: the two reconstructions averaged (one reconstruction, one map, one z-map:
    what one model with two decoders could do unchanged downstream). All pooled as ``Sir()`` pools (top-40 %).
    """
    twins = {p.parent.name + "/" + p.stem.split("_", 1)[1]: p for run in adopted for p in run.glob("work/seed*/*.pt")}
    rows = []
    for path in sorted(reseeded.glob("work/seed*/init2_*.pt")):
        seed = int(path.parent.name.removeprefix("seed"))
        _, setting, joined = path.stem.split("_", 2)
        twin = twins[f"{path.parent.name}/{setting}_{joined}"]
        models = []
        for training, weights in ((ADOPTED[setting], twin), ("init2", path)):
            sir = build_model(model_spec(config, training, setting), config.image_size, config.backbone, 1)
            sir.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            models.append(sir.eval())
        generator = models[0].model.anomaly_map_generator
        for name in joined.split("+"):
            data = member_datamodule(config, name, 1, seed)
            data.setup()
            splits = {"val": data.val_data, "test": data.test_data}
            references, prepared = raw_images(data.train_data), prepared_splits(models[0], name, splits)
            size = next(iter(prepared.values())).shape[-2:]
            outputs = [model_outputs(sir, references, prepared) for sir in models]  # one teacher: shared features
            maps = [{s: generator(f, r, size) for s, (f, r) in out.items()} for out in outputs]
            mean = {s: (maps[0][s] + maps[1][s]) / 2 for s in maps[0]}
            averaged = {
                s: generator(f, [(a + b) / 2 for a, b in zip(r, outputs[1][s][1], strict=True)], size)
                for s, (f, r) in outputs[0].items()
            }
            z_maps = {
                "ensemble2/own-z": {s: sum(normalised(m[s], m[VIEWS], "pixel") for m in maps) / 2 for s in splits},
                "ensemble2/raw-mean": {s: normalised(mean[s], mean[VIEWS], "pixel") for s in splits},
                "ensemble2/feature-mean": {s: normalised(averaged[s], averaged[VIEWS], "pixel") for s in splits},
            }
            for scoring, by_split in z_maps.items():
                row = {"model": f"SIR+{scoring}", "setting": setting, "shot": "1-shot", "dataset": name, "seed": seed}
                for split, column in (("val", "val_image_AUROC"), ("test", "image_AUROC")):
                    row[column] = rank_auroc(generator.score(by_split[split]), labels_of(splits[split]))
                rows.append({**row, "train_s": None, "status": "ok"})
                print(seed, setting, name, scoring, round(row["val_image_AUROC"], 3))
    return rows


@torch.no_grad()
def model_outputs(sir: Sir, references: list[torch.Tensor], prepared: dict[str, torch.Tensor]) -> dict:
    """``{split: (features, reconstruction)}`` of each split and (under ``VIEWS``) of the reference views."""
    inputs = {**prepared, VIEWS: sir.domain_views(references)}
    return {s: sir.model.features_and_reconstruction(x) for s, x in inputs.items()}


def groups_of(config: BenchmarkConfig, setting: str) -> list[list[str]]:
    """Return the training groups of a setting: all datasets together (universal) or each alone (specialised)."""
    names = list(config.datasets)
    return [names] if setting == "universal" else [[n] for n in names]


def score_model(sir: Sir, members: list, seed: int, training: str, setting: str, seconds) -> list[dict]:
    """Return one trained model's rows: each member dataset scored every way, from its own training normal."""
    rows = []
    for data in members:
        splits = {"val": data.val_data, "test": data.test_data}
        scores = scorings_of(sir, raw_images(data.train_data), prepared_splits(sir, data.name, splits))
        for scoring, by_split in scores.items():
            model = "SIR" if (training, scoring) == ("plain", "raw") else f"SIR+{training}/{scoring}"
            row = {"model": model, "setting": setting, "shot": "1-shot", "dataset": data.name, "seed": seed}
            row["val_image_AUROC"] = rank_auroc(by_split["val"], labels_of(splits["val"]))
            row["image_AUROC"] = rank_auroc(by_split["test"], labels_of(splits["test"]))
            rows.append({**row, "train_s": seconds, "status": "ok"})
        latest = {r["model"]: round(r["val_image_AUROC"], 3) for r in rows[-len(scores) :]}
        print(seed, training, setting, data.name, latest)
    return rows


def summary(results: pd.DataFrame) -> str:
    """Markdown: per setting and model, mean val/test over datasets (± over draws), and per dataset val."""
    per_seed = results.groupby(["setting", "model", "seed"], sort=False)[["val_image_AUROC", "image_AUROC"]].mean()
    lines = ["| setting | model | mean val | mean test | draws |", "|---|---|---|---|---|"]
    for (setting, model), group in per_seed.groupby(level=["setting", "model"], sort=False):
        lines.append(
            f"| {setting} | {model} | {group.val_image_AUROC.mean():.3f} ± {group.val_image_AUROC.std(ddof=0):.3f} "
            f"| {group.image_AUROC.mean():.3f} ± {group.image_AUROC.std(ddof=0):.3f} | {len(group)} |"
        )
    table = results.pivot_table(index=["setting", "model"], columns="dataset", values="val_image_AUROC", sort=False)
    return "\n".join(lines) + "\n\nValidation AUROC per dataset (mean over draws):\n\n" + table.round(3).to_markdown()


#: What ``Sir()`` does since issue 19 (``repair=None``, ``training_domains=True``), per setting: repair training
#: only where several datasets are learnt at once, every dataset scored with its own error statistics.
ADOPTED = {"universal": "repair", "specialized": "plain"}


def with_adopted(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` plus the rows of ``SIR+adopted`` (own-z) and ``SIR+adopted/<pooling>``: the ``ADOPTED`` training.

    Example:
        >>> rows = pd.DataFrame({"model": ["SIR+plain/own-z", "SIR+repair/own-z", "SIR+repair/own-z/max"],
        ...                      "setting": ["specialized", "universal", "universal"]})
        >>> with_adopted(rows).model.tolist()[3:]
        ['SIR+adopted', 'SIR+adopted/max', 'SIR+adopted']

    """
    results = results[~results.model.str.startswith("SIR+adopted")]
    picked = []
    for setting, training in ADOPTED.items():
        rows = results[(results.setting == setting) & results.model.str.startswith(f"SIR+{training}/own-z")]
        rows = rows[(rows.model == f"SIR+{training}/own-z") | rows.model.str.startswith(f"SIR+{training}/own-z/")]
        picked.append(rows.assign(model=rows.model.str.replace(f"SIR+{training}/own-z", "SIR+adopted", regex=False)))
    return pd.concat([results, *picked], ignore_index=True)


def write(output: Path, args, results: pd.DataFrame) -> None:
    """Write results.csv (with the ``SIR+adopted`` rows) and summary.md."""
    results = with_adopted(results)
    results.to_csv(output / "results.csv", index=False)
    seeds = sorted(results.seed.unique().tolist())
    (output / "summary.md").write_text(f"# Reference levers ({args.config}, draws {seeds})\n\n{summary(results)}\n")


def main(argv=None) -> int:
    """Train, score every scoring, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[])
    parser.add_argument("--settings", nargs="+", default=["universal", "specialized"])
    parser.add_argument("--trainings", nargs="+", default=list(TRAININGS), choices=TRAININGS)
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="earlier outputs of this script")
    parser.add_argument("--rescore", type=Path, nargs="+", default=[], help="outputs whose saved models to re-score")
    parser.add_argument("--ensemble", type=Path, nargs="+", default=[], help="ADOPTED runs, then an init2 run")
    parser.add_argument("--scorings", nargs="+", help="only these scorings (default: every one of SCORINGS)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.scorings:
        global SCORINGS  # one run scores one subset
        SCORINGS = tuple(s for s in SCORINGS if s.name in args.scorings)
    config, output = open_run(args)
    rows = merged_rows(args.merge)
    rows += [row for run in args.rescore for row in rescore(config, run)]
    if args.ensemble:
        rows += ensemble(config, args.ensemble[:-1], args.ensemble[-1])
    for seed in args.seeds:
        start = time.perf_counter()
        rows += run_seed(config, seed, output / "work" / f"seed{seed}", args.settings, args.trainings)
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s")
        write(output, args, pd.DataFrame(rows))
    write(output, args, pd.DataFrame(rows))
    print((output / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
