"""SIR learns (loss down, lesions above normals, maps on lesions); a lean constructor; the kNN bank's lifecycle."""

from __future__ import annotations

import inspect
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
    defaults = {"image_size": (64, 64), "width": 32, "loops": 2, "post_processor": False}
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


def test_sir_constructor_is_lean() -> None:
    parameters = [name for name in inspect.signature(Sir.__init__).parameters if name != "self"]
    assert len(parameters) <= 19, parameters  # 17 + the two levers issue 19 adopted (repair, training_domains)
    removed = {"shared_loops", "expansion", "blocks", "fusion_scale", "bottleneck_dropout", "bottleneck_pool"}
    removed |= {"loop_weighting", "scale_fusion", "rotation_degrees", "translate_fraction", "scale_jitter"}
    removed |= {"gamma_jitter", "elastic_alpha", "sigma", "standardize_input", "learning_rate", "weight_decay"}
    removed |= {"foreground", "error_normalization", "repair_probability"}  # issue 19's first lever run
    assert removed.isdisjoint(parameters)


def test_views_follow_the_augment_switch() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    views = _small_sir()._augment(images)
    assert views.shape == images.shape
    assert not torch.allclose(views, images)
    affine = Sir.configure_augmentation().transforms[1]
    assert affine.degrees == [-Sir.ROTATION_DEGREES, Sir.ROTATION_DEGREES]
    assert torch.equal(_small_sir(augment=False)._augment(images), images)


def _batch(images: torch.Tensor):
    from anomalib.data import ImageBatch

    return ImageBatch(image=images, gt_label=torch.zeros(len(images), dtype=torch.long))


def test_knn_model_fits_its_bank_from_un_augmented_training_images() -> None:
    """MemoryBankMixin lifecycle: training batches are collected until fit(), which sets _is_fitted."""
    torch.manual_seed(0)
    model = _small_sir(knn_weight=1.0, pre_trained=False, memory_bank_size=10_000)
    images = [torch.rand(2, 3, 64, 64), torch.rand(3, 3, 64, 64)]
    for batch in images:
        model.training_step(_batch(batch))
    assert not model._is_fitted
    assert model.model.memory_bank.numel() == 0
    model.fit()
    assert model._is_fitted
    # the bank holds every position of the *un-augmented* images (no core-set below memory_bank_size)
    expected = torch.cat([model.model.knn_embedding(model.model.extract_features(b)) for b in images])
    assert torch.equal(model.model.memory_bank, expected.permute(0, 2, 3, 1).reshape(-1, expected.shape[1]))
    assert (model.model.map_scales > 0).all()
    model.training_step(_batch(torch.rand(2, 3, 64, 64)))  # once fitted, nothing more is collected
    assert model._bank_images == []


def test_reconstruction_only_model_builds_no_bank() -> None:
    model = _small_sir(pre_trained=False)
    model.training_step(_batch(torch.rand(2, 3, 64, 64)))
    model.on_train_epoch_end()
    model.on_train_end()
    assert model._bank_images == []
    assert model.model.memory_bank.numel() == 0
    assert not model._is_fitted
    assert torch.equal(model.model.map_scales, torch.ones(2))


def test_fit_without_training_images_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no training images"):
        _small_sir(knn_weight=1.0, pre_trained=False).fit()


def _engine(tmp_path: Path, **kwargs):
    from anomalib.engine import Engine

    return Engine(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # no validation epoch: test must work from what training left
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_knn_model_tested_right_after_max_steps_training(demo_datamodule, demo_root: Path, tmp_path: Path) -> None:
    """After engine.fit(max_steps) without validation: fitted bank, final-decoder scale (in the checkpoint too)."""
    from lightning.pytorch import Callback

    class FirstEpochScale(Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 1:
                self.value = module.model.map_scales.clone()

    recorder = FirstEpochScale()
    torch.manual_seed(0)
    model = _small_sir(knn_weight=1.0, pre_trained=False, post_processor=True)
    engine = _engine(tmp_path, max_steps=14, callbacks=[recorder])  # 12 images in batches of 4: 4 2/3 epochs
    engine.fit(model=model, datamodule=demo_datamodule())

    assert model._is_fitted
    assert model.model.memory_bank.shape == (12 * 4 * 4, 112)  # every position of the 12 normals (stride 16)
    final = model.model.map_scales.clone()
    assert final[1] == recorder.value[1]  # the kNN scale depends on the frozen teacher only
    assert not torch.isclose(final[0], recorder.value[0])  # the decoder trained on after the first epoch
    # = the final decoder's mean reconstruction map over the 12 training normals, computed independently
    normals = model.pre_processor(_load(demo_root / "train/good"))
    model.model.fit_reconstruction_scale([model.model.extract_features(normals)], normals.shape[-2:])
    assert torch.allclose(model.model.map_scales, final, rtol=1e-4)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.allclose(state["model.map_scales"], final)
    assert bool(state["_is_fitted"])

    (metrics,) = engine.test(model=model, datamodule=demo_datamodule())
    assert 0.0 <= metrics["image_AUROC"] <= 1.0


def test_an_untrained_knn_model_refuses_to_test(demo_datamodule, tmp_path: Path) -> None:
    model = _small_sir(knn_weight=1.0, pre_trained=False, post_processor=True)
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        _engine(tmp_path).test(model=model, datamodule=demo_datamodule())


def test_a_checkpoint_of_other_model_arguments_is_refused_in_one_line() -> None:
    model = Sir(image_size=(64, 64), width=16, loops=1, pre_trained=False)
    trained = {**dict(model.hparams), "image_size": [256, 256], "width": 32}
    with pytest.raises(ValueError, match=r'other Sir arguments.*--model.image_size "\[256, 256\]" --model.width "32"'):
        model.on_load_checkpoint({"hyper_parameters": trained})
    model.on_load_checkpoint({"hyper_parameters": {**dict(model.hparams), "image_size": [64, 64]}})  # lists match


def test_repair_training_and_training_domains_follow_the_training_data(tmp_path: Path) -> None:
    from anomalib.engine import Engine

    from anomalib_sir.data import UniversalDataModule
    from anomalib_sir.data.demo import SirDemo

    def member(source: str) -> SirDemo:
        sizes = {"image_size": 32, "num_train": 2, "num_test_normal": 2, "num_test_abnormal": 2}
        return SirDemo(root=tmp_path / source, source=source, num_workers=0, **sizes)

    def fit(datamodule, **kwargs) -> Sir:
        model = _small_sir(image_size=(32, 32), width=16, loops=1, pre_trained=False, **kwargs)
        engine = Engine(
            max_steps=2,
            default_root_dir=tmp_path / "run",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        engine.fit(model=model, datamodule=datamodule)
        return model

    universal = fit(UniversalDataModule([member("retina"), member("histology")], shot=1, num_workers=0))
    assert universal._repairs  # repair=None: on for several training datasets
    assert universal.domain_names == ["sir_demo_retina", "sir_demo_histology"]
    single = fit(member("retina"))
    assert not single._repairs
    assert single.domain_names == ["sir_demo_retina"]
    off = fit(member("retina"), repair=True, training_domains=False)
    assert off._repairs
    assert off.domain_names == []
