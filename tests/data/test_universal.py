"""Universal datamodule: union training, per-dataset metric table, ranking preserved through the Engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from torchmetrics.functional.classification import binary_auroc

from anomalib_sir import Sir
from anomalib_sir.data import ClassFolders, LabelsFile, PerDatasetEvaluator, ShotError, UniversalDataModule
from anomalib_sir.post_processing import RankPreservingPostProcessor


def test_union_of_shots_and_per_member_eval_sets(
    make_class_folders: Callable[..., Path], make_labels_file: Callable[..., Path], tmp_path: Path
) -> None:
    members = [
        ClassFolders(make_class_folders("brain", normal=10, abnormal=3), name="brain", normal_dir="no"),
        LabelsFile(make_labels_file("headct", normal=8, abnormal=4), name="headct"),
    ]
    universal = UniversalDataModule(members, shot=2, num_workers=0, split_dir=tmp_path)
    universal.setup()
    assert universal.dataset_names == ["brain", "headct"]
    assert len(universal.train_data) == 4
    assert sorted(universal.train_data.samples["dataset"]) == ["brain", "brain", "headct", "headct"]
    assert [len(d) for d in universal.test_datasets] == [5 + 3, 4 + 4]
    assert len(universal.test_data) == 16
    member_of = universal.dataset_index(universal.test_data.samples["image_path"])
    assert member_of.bincount().tolist() == [8, 8]
    assert int(universal.dataset_index(["/elsewhere.png"])) == -1
    train = set(universal.train_data.samples["image_path"])
    assert not train & set(universal.test_data.samples["image_path"])
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["brain.csv", "headct.csv"]
    with pytest.raises(ShotError, match="brain: shot=9"):
        UniversalDataModule(members, shot=9).setup()


def test_anomalib_member_is_read_through_sir_dataset(make_labels_file: Callable[..., Path], tmp_path: Path) -> None:
    root = make_labels_file("folder_ds", normal=8, abnormal=4)  # PNGs only, so anomalib's Folder finds them
    labels = pd.read_csv(root / "labels.csv", skipinitialspace=True)
    for name, label in (("good", 0), ("bad", 1)):
        (root / name).mkdir()
        for file_id in labels.loc[labels["hemorrhage"] == label, "id"]:
            (root / "head_ct" / f"{file_id:03d}.png").rename(root / name / f"{file_id:03d}.png")
    folder = Folder(
        name="folder",
        root=root,
        normal_dir="good",
        abnormal_dir="bad",
        val_split_mode="from_train",
        val_split_ratio=0.25,
        num_workers=0,
        seed=0,
    )
    universal = UniversalDataModule([folder], shot=3, num_workers=0, split_dir=tmp_path)
    universal.setup()
    assert len(universal.train_data) == 3
    assert universal.dataset_names == ["folder"]
    item = universal.test_data[0]
    assert item.image.shape == (3, 16, 16)


def test_engine_reports_per_dataset_table_and_keeps_ranking(
    make_class_folders: Callable[..., Path], make_labels_file: Callable[..., Path], tmp_path: Path
) -> None:
    members = [
        ClassFolders(make_class_folders("brain", normal=12, abnormal=6), name="brain", normal_dir="no"),
        LabelsFile(make_labels_file("headct", normal=12, abnormal=6), name="headct"),
    ]
    datamodule = UniversalDataModule(members, shot=2, num_workers=0, train_batch_size=4, eval_batch_size=8)
    model = Sir(image_size=(32, 32), width=16, loops=1, pre_trained=False, visualizer=False)
    assert isinstance(model.post_processor, RankPreservingPostProcessor)
    assert isinstance(model.evaluator, PerDatasetEvaluator)
    # no validation epoch during fit: the post-processor refits on the (normal-only) validation data
    engine = Engine(
        max_steps=2,
        check_val_every_n_epoch=50,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    (results,) = engine.test(model=model, datamodule=datamodule)

    assert model.post_processor.dataset_stats.shape == (2, 4)
    for name in ("brain", "headct"):
        assert 0.0 <= results[f"image_AUROC/{name}"] <= 1.0
    mean = (results["image_AUROC/brain"] + results["image_AUROC/headct"]) / 2
    assert results["image_AUROC"] == pytest.approx(mean)
    run_dir = Path(engine.trainer.default_root_dir)
    table = pd.read_csv(run_dir / "metrics_per_dataset.csv", index_col="dataset")
    assert table.index.tolist() == ["brain", "headct", "mean"]
    assert {"image_AUROC", "image_AUPR", "image_F1Score"} <= set(table.columns)
    assert "| mean |" in (run_dir / "metrics_per_dataset.md").read_text()
    assert sorted(p.name for p in (run_dir / "splits").iterdir()) == ["brain.csv", "headct.csv"]

    # AUROC through the engine equals AUROC of the raw model scores, per dataset (each image scored against
    # its own dataset's domain, as the test step routes it)
    model.eval()
    domain_of_dataset = torch.tensor([model.domain_names.index(name) for name in datamodule.dataset_names])
    raw, labels, member = [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            index = datamodule.dataset_index(batch.image_path)
            images = model.pre_processor.transform(batch.image)
            raw.append(model.model(images, domain=domain_of_dataset[index]).pred_score)
            labels.append(batch.gt_label)
            member.append(index)
    raw_scores, gt, member_of = torch.cat(raw), torch.cat(labels), torch.cat(member)
    for index, name in enumerate(datamodule.dataset_names):
        keep = member_of == index
        raw_auroc = float(binary_auroc(raw_scores[keep], gt[keep]))
        assert results[f"image_AUROC/{name}"] == pytest.approx(raw_auroc, abs=1e-6)
