"""Shapes, dtypes, validation, frozen teacher, kNN term and core-set of the SIR torch model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from anomalib.models.components import KCenterGreedy

from anomalib_sir.models.coreset import QuietKCenterGreedy
from anomalib_sir.models.sir.anomaly_map import SirAnomalyMapGenerator
from anomalib_sir.models.sir.loss import SirLoss
from anomalib_sir.models.sir.torch_model import SirModel, UpThenDownBlock


@pytest.mark.parametrize(
    ("backbone", "layers", "pre_trained", "size"),
    [
        ("tf_efficientnet_lite0", (1, 2, 3), True, (64, 64)),
        ("tf_efficientnet_lite0", (2, 3), True, (65, 47)),
        ("resnet18", (1, 2, 3), False, (97, 131)),
        ("mobilenetv3_small_100", (1, 2, 3, 4), False, (72, 72)),
    ],
)
def test_eval_output_shapes_and_dtypes(backbone, layers, pre_trained, size) -> None:
    model = SirModel(backbone=backbone, layers=layers, pre_trained=pre_trained, width=16, loops=2).eval()
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        output = model(images)
    assert output.anomaly_map.shape == (2, 1, *size)
    assert output.pred_score.shape == (2,)
    assert output.anomaly_map.dtype == torch.float32
    assert output.pred_score.dtype == torch.float32
    assert torch.isfinite(output.anomaly_map).all()
    assert (output.anomaly_map >= -1e-5).all()  # 1 - cos is non-negative (up to blur rounding)


def test_train_output_has_every_loop_and_teacher_shapes() -> None:
    model = SirModel(pre_trained=False, width=16, loops=3).train()
    output = model(torch.rand(2, 3, 64, 64))
    assert len(output.reconstructions) == 3
    for loop in output.reconstructions:
        for teacher, reconstruction in zip(output.teacher_features, loop, strict=True):
            assert reconstruction.shape == teacher.shape


def test_loops_share_one_decoder_and_refine_the_previous_reconstruction() -> None:
    """Every loop runs the same decoder weights, and loop t+1 fuses loop t's output (not the teacher again)."""
    model = SirModel(pre_trained=False, width=16, loops=3).eval()
    one_loop = SirModel(pre_trained=False, width=16, loops=1).eval()
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for p in one_loop.trainable_parameters()
    )
    calls: list[torch.Tensor] = []
    model.fusion.register_forward_hook(lambda module, args, output: calls.append(args[0][0]))
    with torch.no_grad():
        teacher = model.extract_features(torch.rand(2, 3, 64, 64))
        loops = model.reconstruct(teacher)
    assert len(calls) == 3
    assert torch.equal(calls[0], teacher[0])
    assert torch.equal(calls[1], loops[0][0])
    assert torch.equal(calls[2], loops[1][0])


def test_training_noise_only_in_training_mode() -> None:
    model = SirModel(pre_trained=False, width=16, loops=1)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        teacher = model.extract_features(images)
        eval_a, eval_b = model.eval().reconstruct(teacher), model.reconstruct(teacher)
        train_a, train_b = model.train().reconstruct(teacher), model.reconstruct(teacher)
    assert torch.equal(eval_a[0][0], eval_b[0][0])
    assert not torch.allclose(train_a[0][0], train_b[0][0])


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    model = SirModel(pre_trained=False, width=16, loops=2)
    model.train()
    assert not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable.isdisjoint(id(p) for p in model.teacher.parameters())
    before = [p.clone() for p in model.teacher.parameters()]
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        output = model(torch.rand(2, 3, 64, 64))
        loss = SirLoss()(output.teacher_features, output.reconstructions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters(), strict=True))


def test_up_then_down_block_expands_then_contracts() -> None:
    block = UpThenDownBlock(width=8, expansion=3)
    hidden = block.up(torch.rand(1, 8, 5, 7))
    assert hidden.shape == (1, 24, 10, 14)
    assert block.down(hidden).shape == (1, 8, 5, 7)
    assert block(torch.rand(1, 8, 5, 7)).shape == (1, 8, 5, 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loops": 0}, "invalid loops"),
        ({"width": 0}, "invalid width"),
        ({"layers": ()}, "invalid layers"),
        ({"noise_std": -1.0}, "invalid noise_std"),
        ({"knn_weight": -1.0}, "invalid knn_weight"),
        ({"memory_bank_size": 0}, "invalid memory_bank_size"),
        ({"topk_ratio": 0.0}, "topk_ratio"),
        ({"score_mode": "mean"}, "score_mode"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SirModel(pre_trained=False, **kwargs)


def test_score_modes() -> None:
    anomaly_map = torch.zeros(1, 1, 10, 10)
    anomaly_map[0, 0, 0, 0] = 1.0
    assert SirAnomalyMapGenerator(score_mode="max").score(anomaly_map).item() == pytest.approx(1.0)
    topk = SirAnomalyMapGenerator(score_mode="topk", topk_ratio=0.02).score(anomaly_map).item()
    assert topk == pytest.approx(0.5)


def test_loss_averages_every_loop() -> None:
    teacher = [torch.ones(1, 4, 2, 2)]
    perfect, opposite = [torch.ones(1, 4, 2, 2)], [-torch.ones(1, 4, 2, 2)]
    assert SirLoss()(teacher, [opposite, perfect]).item() == pytest.approx(1.0)  # (2 + 0) / 2
    assert SirLoss()(teacher, [perfect, perfect]).item() == pytest.approx(0.0)


def test_knn_term_needs_a_fitted_bank_and_survives_a_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    model = SirModel(layers=(1, 2, 3), pre_trained=False, width=16, loops=1, knn_weight=1.0, memory_bank_size=64).eval()
    images = torch.rand(3, 3, 64, 64)
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        model(images)
    model.fit_memory_bank(images)
    model.fit_reconstruction_scale([model.extract_features(images)], images.shape[-2:])
    assert model.memory_bank.shape[0] == 64  # 3 images x 16x16 positions, core-set down to 64
    assert (model.map_scales > 0).all()
    with torch.no_grad():
        scores = model(images).pred_score
    # A fresh model (empty bank) strict-loads the fitted state: buffers are resized, scores identical.
    restored = SirModel(
        layers=(1, 2, 3), pre_trained=False, width=16, loops=1, knn_weight=1.0, memory_bank_size=64
    ).eval()
    restored.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(restored(images).pred_score, scores)


def test_knn_term_raises_scores_of_unseen_content() -> None:
    torch.manual_seed(0)
    model = SirModel(pre_trained=False, width=16, loops=1, knn_weight=1.0).eval()
    normals = torch.zeros(2, 3, 64, 64) + 0.1 * torch.rand(2, 3, 64, 64)
    model.fit_memory_bank(normals)
    odd = normals.clone()
    odd[:, :, 20:40, 20:40] = 3.0
    with torch.no_grad():
        assert (model(odd).pred_score > model(normals).pred_score).all()


def test_reconstruction_scale_is_the_mean_reconstruction_map() -> None:
    torch.manual_seed(0)
    model = SirModel(pre_trained=False, width=16, loops=2).eval()
    images = torch.rand(4, 3, 64, 64)
    model.fit_reconstruction_scale([model.extract_features(chunk) for chunk in images.split(2)], (64, 64))
    with torch.no_grad():
        expected = model(images).anomaly_map.mean()  # knn_weight 0: the map is the reconstruction term
    assert torch.allclose(model.map_scales[0], expected)
    assert model.map_scales[1] == 1.0


def test_core_set_is_anomalibs_and_prints_no_progress_bar(capsys) -> None:
    """Same indices as anomalib's KCenterGreedy under the same seeds; no tqdm bar (it cost memory beside Rich's)."""
    embedding = torch.randn(500, 16)
    torch.manual_seed(3)
    np.random.seed(3)  # the random projection draws from numpy and torch
    ours = QuietKCenterGreedy(embedding, sampling_ratio=0.2).select_coreset_idxs()
    assert "Selecting Coreset" not in "".join(capsys.readouterr())
    torch.manual_seed(3)
    np.random.seed(3)
    theirs = KCenterGreedy(embedding, sampling_ratio=0.2).select_coreset_idxs()
    assert ours == theirs
    assert len(set(ours)) == 100


_CORESET_UNDER_A_MEMORY_CAP = """
import resource, numpy, torch
resource.setrlimit(resource.RLIMIT_DATA, (3 * 2**30, 3 * 2**30))
torch.set_num_threads(1)
torch.manual_seed(0)
numpy.random.seed(0)
from anomalib_sir.models.coreset import QuietKCenterGreedy  # the sampler SirModel.fit_memory_bank uses
embedding = torch.randn(150, 120, 8, 8).permute(0, 2, 3, 1).reshape(-1, 120)  # a 150-image bank's vectors
print(tuple(QuietKCenterGreedy(embedding, sampling_ratio=800 / len(embedding)).sample_coreset().shape))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator behaviour")
def test_memory_bank_core_set_fits_in_3_gb_without_allocator_tuning() -> None:
    # anomalib's sampler allocates a new (N, d) tensor per selected vector; with glibc's default allocator this
    # 9600-vector bank then fails under 3 GB ("can't allocate memory"; anomalib train was OOM-killed at 24 GB on
    # a 150-image full-shot bank). The model's sampler reuses its buffers, so no mallopt is needed.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}  # conftest sets it for the suite
    result = subprocess.run(
        [sys.executable, "-c", _CORESET_UNDER_A_MEMORY_CAP],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(800, 120)"


def test_standardized_input_ignores_exposure_and_contrast() -> None:
    """A brighter, higher-contrast copy of an image gets the same map and score (STANDARDIZE_INPUT)."""
    torch.manual_seed(0)
    model = SirModel(pre_trained=False, width=16, loops=2).eval()
    plain = SirModel(pre_trained=False, width=16, loops=2).eval()
    plain.load_state_dict(model.state_dict())
    plain.STANDARDIZE_INPUT = False
    images = torch.rand(2, 3, 64, 64) - 0.5
    changed = 1.7 * images + 0.3
    with torch.no_grad():
        out, out_changed = model(images), model(changed)
        raw, raw_changed = plain(images), plain(changed)
    assert torch.allclose(out.anomaly_map, out_changed.anomaly_map, atol=1e-4)
    assert torch.allclose(out.pred_score, out_changed.pred_score, atol=1e-5)
    assert not torch.allclose(raw.pred_score, raw_changed.pred_score, atol=1e-3)  # without it, they differ


def test_no_module_of_the_package_imports_unittest() -> None:
    """Library code patches nothing at run time (mock.patch once muted anomalib's core-set bar)."""
    import ast
    from pathlib import Path

    import anomalib_sir

    offenders = []
    for path in Path(anomalib_sir.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "unittest"]
    assert not offenders


def test_domain_corrections_read_a_3x3_neighbourhood_and_older_per_position_banks_are_widened() -> None:
    from anomalib_sir.models.sir.domains import CORRECTION_CONTEXT, domain_descriptor, fit_corrections

    model = SirModel(pre_trained=False, width=8, loops=1).eval()
    views, queries = torch.rand(4, 3, 64, 64), torch.rand(2, 3, 64, 64)
    features, reconstruction = model.features_and_reconstruction(views)
    channels = features[0].shape[1]
    old = SirModel(pre_trained=False, width=8, loops=1).eval()
    old.load_state_dict(model.state_dict())  # the same decoder, no domains
    model.add_domain("new", views)
    assert model.domains.correction_0.shape[1:] == (channels * CORRECTION_CONTEXT**2 + 1, channels)
    # the bank of a checkpoint made before the 3x3 corrections holds per-position (C + 1, C) maps
    corrections = fit_corrections(features, reconstruction, context=1)
    maps = old.raw_anomaly_map(features, reconstruction, views.shape[-2:])
    old.domains.add("before", domain_descriptor(features), corrections, maps, old.anomaly_map_generator.score, 2.0)
    before = old(queries).pred_score
    old.add_domain("after", views)  # the old domain's maps are rewritten as 3x3 ones that score the same
    channels = features[1].shape[1]
    assert old.domains.correction_1.shape[1:] == (channels * CORRECTION_CONTEXT**2 + 1, channels)
    routed = torch.zeros(len(queries), dtype=torch.long)  # to "before"
    assert torch.allclose(old(queries, domain=routed).pred_score, before, atol=1e-5)
