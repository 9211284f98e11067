"""SIR learns: loss goes down, synthetic lesions score above held-out normals, maps peak on lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalib_sir import Sir
from anomalib_sir.models.sir.loss import SirLoss


def _load(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]) / 255


def _train(model: Sir, images: torch.Tensor, steps: int, seed: int) -> list[float]:
    """A plain loop over the Lightning module's own pieces (pre-processor, augmentation, loss)."""
    torch.manual_seed(seed)
    optimizer = model.configure_optimizers()
    model.train()
    inputs = model.pre_processor(images)
    losses = []
    for _ in range(steps):
        batch = inputs[torch.randperm(len(inputs))[:8]]
        output = model.model(model._augment(batch))
        loss = model.loss(output.teacher_features, output.reconstructions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _small_sir(**kwargs) -> Sir:
    defaults = {"image_size": (64, 64), "width": 32, "loops": 2, "sigma": 2.0, "post_processor": False}
    return Sir(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def trained(demo_root: Path) -> tuple[Sir, list[float]]:
    torch.manual_seed(0)
    model = _small_sir()
    losses = _train(model, _load(demo_root / "train/good"), steps=40, seed=0)
    return model.eval(), losses


def test_training_lowers_the_loss(trained) -> None:
    _, losses = trained
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_synthetic_lesions_score_higher_and_maps_peak_on_them(trained, demo_root: Path) -> None:
    model, _ = trained
    normals, lesions = _load(demo_root / "test/good"), _load(demo_root / "test/lesion")
    masks = _load(demo_root / "ground_truth/lesion")[:, 0] > 0.5
    with torch.no_grad():
        out_normal = model(normals)
        out_lesion = model(lesions)
    scores = torch.cat([out_normal.pred_score, out_lesion.pred_score]).numpy()
    labels = np.r_[np.zeros(len(normals)), np.ones(len(lesions))]
    assert roc_auc_score(labels, scores) >= 0.85

    hits = 0
    for anomaly_map, mask in zip(out_lesion.anomaly_map[:, 0], masks, strict=True):
        peak = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
        dilated = torch.nn.functional.max_pool2d(mask[None, None].float(), 9, stride=1, padding=4)[0, 0] > 0
        hits += bool(dilated[peak])
    assert hits >= 0.75 * len(lesions)


def test_training_is_deterministic_under_a_seed(demo_root: Path) -> None:
    images = _load(demo_root / "train/good")[:4]
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        model = _small_sir(width=16)
        losses = _train(model, images, steps=3, seed=7)
        with torch.no_grad():
            scores = model.eval()(images).pred_score
        results.append((losses, scores))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_lightning_training_step_returns_a_differentiable_loss(demo_root: Path) -> None:
    from anomalib.data import ImageBatch

    model = _small_sir(width=16)
    images = model.pre_processor(_load(demo_root / "train/good")[:2])
    batch = ImageBatch(image=images, gt_label=torch.zeros(2, dtype=torch.long))
    loss = model.training_step(batch)["loss"]
    assert loss.requires_grad
    assert loss.ndim == 0
    assert isinstance(model.loss, SirLoss)


def test_gamma_and_elastic_views_stay_valid_images() -> None:
    """Gamma/elastic views keep shape, stay inside the normalised [0, 1] range and differ from the input."""
    torch.manual_seed(0)
    model = _small_sir(gamma_jitter=0.5, elastic_alpha=20.0)
    images = model.pre_processor(torch.rand(4, 3, 64, 64))
    views = model._augment(images)
    assert views.shape == images.shape
    assert torch.isfinite(views).all()
    # normalised with mean/std 0.5: [0, 1] maps to [-1, 1]; the contrast/brightness jitter widens it a little
    assert views.abs().max() <= 1.15 * 1.0 + 0.1 + 1e-5
    assert not torch.allclose(views, images)


def test_gamma_jitter_changes_only_intensities() -> None:
    """With geometry off (gamma only), a view is a monotone re-mapping of each image's intensities."""
    torch.manual_seed(0)
    model = _small_sir(gamma_jitter=1.0)
    model.augmentation = None  # isolate the gamma step from flips/affine and the gain/bias jitter
    model.gamma_jitter = 1.0
    images = model.pre_processor(torch.rand(2, 3, 64, 64))
    views = model._random_gamma(images)
    for image, view in zip(images, views, strict=True):
        order = torch.argsort(image.flatten())
        assert (torch.diff(view.flatten()[order]) >= -1e-6).all()
    assert not torch.allclose(views, images, atol=1e-3)


@pytest.mark.parametrize("kwargs", [{"gamma_jitter": -0.1}, {"elastic_alpha": -1.0}])
def test_negative_augmentation_strengths_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        _small_sir(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"rotation_degrees": -1.0}, {"translate_fraction": 1.0}, {"scale_jitter": 1.0}, {"scale_jitter": -0.1}]
)
def test_out_of_range_view_strengths_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        _small_sir(**kwargs)


def test_view_strengths_reach_the_affine_transform() -> None:
    model = _small_sir(rotation_degrees=20.0, translate_fraction=0.15, scale_jitter=0.25)
    affine = model.augmentation.transforms[1]
    assert affine.degrees == [-20.0, 20.0]
    assert affine.translate == (0.15, 0.15)
    assert affine.scale == (0.75, 1.25)


def test_knn_term_scales_come_from_the_final_decoder(demo_datamodule, tmp_path: Path) -> None:
    """The reconstruction scale is re-fitted after training, and the saved checkpoint holds that value."""
    from anomalib.engine import Engine
    from lightning.pytorch import Callback

    class FirstEpochScale(Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 1:
                self.value = module.model.map_scales.clone()

    recorder = FirstEpochScale()
    torch.manual_seed(0)
    model = _small_sir(knn_weight=1.0, pre_trained=False)
    engine = Engine(
        max_steps=12,  # 12 images in batches of 4: four epochs
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    engine.fit(model=model, datamodule=demo_datamodule())

    final = model.model.map_scales.clone()
    assert final[1] == recorder.value[1]  # the kNN scale depends on the frozen teacher only
    assert not torch.isclose(final[0], recorder.value[0])  # the decoder trained on after the first epoch
    model.model.fit_reconstruction_scale(model._scale_images)
    assert torch.allclose(model.model.map_scales, final)  # = the final decoder's mean map on the normals
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]["model.map_scales"]
    assert torch.allclose(saved, final)
