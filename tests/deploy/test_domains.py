"""Domains: add/remove, checkpoints keep them, routing, export parity with two domains, unknown domain."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from PIL import Image

from anomalib_sir.cli import main
from anomalib_sir.deploy import check_parity, export_model, load_sir_checkpoint, predict_scans

SOURCES = ("retina", "histology")


def _load(folder: Path) -> list[torch.Tensor]:
    paths = sorted(folder.glob("*.png"))
    return [
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1) for p in paths
    ]


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    """Two generated domains: their folders, two reference normals and their test images each."""
    from anomalib_sir.data.demo import generate_demo_dataset

    out = {}
    for source in SOURCES:
        root = tmp_path_factory.mktemp(source)
        generate_demo_dataset(root, source, image_size=64, num_train=4, num_test_normal=4, num_test_abnormal=4)
        test = _load(root / "test" / "good") + _load(root / "test" / "lesion")
        out[source] = SimpleNamespace(root=root, references=_load(root / "train" / "good")[:2], test=test)
    return out


@pytest.fixture(scope="module")
def two_domain_sir(trained_sir, two_sources):
    """The tiny trained SIR with only the two generated domains (its own training domain removed)."""
    model = copy.deepcopy(trained_sir)
    for name in model.domain_names:
        model.remove_domain(name)
    for source in SOURCES:
        model.add_domain(source, two_sources[source].references)
    return model.eval()


def _scores(model, images: list[torch.Tensor], domain: int | None = None) -> torch.Tensor:
    x = torch.cat([model.pre_processor.transform(image[None]) for image in images])
    route = None if domain is None else torch.full((len(x),), domain)
    with torch.no_grad():
        return model.model(x, domain=route).pred_score


def _noise_image() -> torch.Tensor:
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_add_then_remove_a_domain_gives_back_the_plain_model(trained_sir, two_sources) -> None:
    model = copy.deepcopy(trained_sir).eval()
    trained = model.domain_names
    images = two_sources["retina"].test
    plain = _scores(model, images, domain=0)
    model.add_domain("retina", two_sources["retina"].references)
    assert model.domain_names == [*trained, "retina"]
    with_domain = _scores(model, images, domain=len(trained))
    assert with_domain.isfinite().all()
    assert not torch.allclose(with_domain, plain)  # scored against the domain's own statistics
    with pytest.raises(ValueError, match="exists already"):
        model.add_domain("retina", two_sources["retina"].references)
    model.remove_domain("retina")
    assert model.domain_names == trained
    torch.testing.assert_close(_scores(model, images, domain=0), plain)
    for name in trained:
        model.remove_domain(name)
    with pytest.raises(KeyError, match=r"no domain named 'ct' \(registered: none\)"):
        model.remove_domain("ct")


def test_training_registers_its_dataset_as_a_domain_that_every_image_matches(
    trained_sir, sir_checkpoint: Path, two_sources
) -> None:
    from anomalib_sir.models.sir.domains import apply_corrections

    assert trained_sir.domain_names == ["demo_tiny"]  # the training datamodule's name
    assert load_sir_checkpoint(sir_checkpoint).domain_names == ["demo_tiny"]  # the file holds it too
    bank = trained_sir.model.domains
    features = [torch.randn(1, c, 2, 2) for c in (bank.correction_0.shape[-1], bank.correction_1.shape[-1])]
    corrected = apply_corrections(features, [bank.correction_0[0], bank.correction_1[0]])
    assert all(torch.equal(a, b) for a, b in zip(corrected, features, strict=True))  # no correction: the z-map only
    scores = _scores(trained_sir, [_noise_image(), *two_sources["histology"].test])
    assert scores.isfinite().all()  # an image of the training domain is never "unknown"
    model = copy.deepcopy(trained_sir)
    model.remove_domain("demo_tiny")
    raw = _scores(model, two_sources["retina"].test)
    assert not torch.allclose(raw, _scores(trained_sir, two_sources["retina"].test))


def test_training_domains_of_several_datasets_leave_foreign_images_unknown(trained_sir, two_sources) -> None:
    model = copy.deepcopy(trained_sir).eval()
    views = model.domain_views(two_sources["retina"].references)
    for name, matches_all in (("retina", False), ("retina_any", True)):
        model.remove_domain(model.domain_names[0])
        model.model.add_domain(name, views, trained=True, matches_all=matches_all)  # as _fit_training_domains does
        scores = _scores(model, [_noise_image(), *two_sources["retina"].test])
        assert torch.isnan(scores[0]) != matches_all  # several datasets: noise is of no domain; one: scored
        assert scores[1:].isfinite().all()


def test_images_are_routed_to_their_own_domain(two_domain_sir, two_sources) -> None:
    from anomalib_sir.models.sir.domains import domain_descriptor

    bank = two_domain_sir.model.domains
    for index, source in enumerate(SOURCES):
        x = torch.cat([two_domain_sir.pre_processor.transform(i[None]) for i in two_sources[source].test])
        with torch.no_grad():
            nearest, distance = bank.route(domain_descriptor(two_domain_sir.model.extract_features(x)))
        assert nearest.tolist() == [index] * len(x)
        assert (distance <= bank.radii[nearest]).all()  # none of them is "unknown"
    # Routing by nearest prototype gives the scores an explicit domain gives.
    images = two_sources["histology"].test
    torch.testing.assert_close(_scores(two_domain_sir, images), _scores(two_domain_sir, images, domain=1))


def test_an_image_of_no_domain_gets_no_score(two_domain_sir, two_sources) -> None:
    scores = _scores(two_domain_sir, [_noise_image(), two_sources["retina"].test[0]])
    assert torch.isnan(scores[0])
    assert torch.isfinite(scores[1])


def test_the_datamodule_names_the_domain(two_domain_sir) -> None:
    datamodule = SimpleNamespace(dataset_names=["histology", "other"], dataset_index=lambda p: torch.tensor([0, 1]))
    two_domain_sir._trainer = SimpleNamespace(datamodule=datamodule)
    try:
        batch = SimpleNamespace(image_path=["a.png", "b.png"], image=torch.zeros(2, 3, 64, 64))
        assert two_domain_sir._known_domains(batch).tolist() == [1, -1]  # "other" is no domain: routed
        for step in (two_domain_sir.validation_step, two_domain_sir.test_step, two_domain_sir.predict_step):
            noise = ImageBatch(image=torch.stack([_noise_image()] * 2), image_path=["a.png", "b.png"])
            scores = step(noise, 0).pred_score
            assert scores[0].isfinite()  # named by the datamodule: scored
            assert scores[1].isnan()  # routed: of no domain
    finally:
        two_domain_sir._trainer = None


def test_exports_hold_the_domains_and_route_by_themselves(two_domain_sir, two_sources, tmp_path: Path) -> None:
    exports = export_model(copy.deepcopy(two_domain_sir), tmp_path, export_types=("onnx", "openvino"))
    batches = [torch.stack(two_sources[source].test).numpy() for source in SOURCES]
    batches += [batches[0][:1], batches[1][-1:]]  # batch size 1 too (OpenVINO once ran it wrongly)
    report = check_parity(two_domain_sir, [exports["openvino"], exports["onnx"]], batches, atol=1e-3)
    print(f"\n{report.format_table()}")
    assert report.passed
    # A deployed model scores a mixed folder and reports the image of no domain as such.
    scans = tmp_path / "scans"
    scans.mkdir()
    for source in SOURCES:
        Image.open(sorted((two_sources[source].root / "test" / "good").glob("*.png"))[0]).save(scans / f"{source}.png")
    Image.fromarray((_noise_image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(scans / "noise.png")
    run = predict_scans(exports["openvino"], [scans], tmp_path / "out", heatmaps=False, progress=False)
    rows = {row.split(",")[0]: row for row in run.csv_path.read_text().splitlines()[1:]}
    assert ",unknown domain," in rows["noise.png"]
    assert run.num_images == 2
    assert run.num_unknown == 1
    assert "1 of no known domain" in run.summary()


def test_add_domain_cli_writes_a_new_checkpoint_that_keeps_its_domains(
    sir_checkpoint: Path, two_sources, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = hashlib.sha256(sir_checkpoint.read_bytes()).hexdigest()
    output = tmp_path / "model_histology.ckpt"
    refs = two_sources["histology"].root / "train" / "good"
    args = ["add-domain", "--ckpt", str(sir_checkpoint), "--name", "histology", "--images", str(refs)]
    assert main([*args, "--output", str(output)]) == 0
    assert "added domain 'histology' from 4 image(s)" in capsys.readouterr().out
    assert hashlib.sha256(sir_checkpoint.read_bytes()).hexdigest() == before  # the input is never modified
    reloaded = load_sir_checkpoint(output)
    assert reloaded.domain_names == ["demo_tiny", "histology"]
    assert _scores(reloaded, two_sources["histology"].test).isfinite().all()
    # Never overwritten; a taken name is refused; both in one line.
    assert main([*args, "--output", str(output)]) == 2
    assert f"{output} already exists; pass a new --output path" in capsys.readouterr().err
    taken = ["add-domain", "--ckpt", str(output), "--name", "histology", "--images", str(refs)]
    assert main([*taken, "--output", str(tmp_path / "again.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "already has a domain named 'histology'" in err
    assert len(err.strip().splitlines()) == 1
