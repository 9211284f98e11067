"""Offline demo dataset: real medical images shipped with scikit-image, with *synthetic* lesions.

**This is a demo, not a benchmark.** scikit-image ships a retinal fundus photograph
(``skimage.data.retina``) and an IHC-stained histology image (``skimage.data.immunohistochemistry``).
:class:`SirDemo` cuts randomly flipped/rotated/scaled crops of one of them as *normal* images and pastes
synthetic lesions (dark haemorrhage-like blots or bright exudate-like spots, with soft edges and
texture) into held-out crops as *anomalies*, with pixel masks. It needs no network and no files, so the
README's main command trains and tests SIR on a fresh machine.

The images are written once (``train/good``, ``test/good``, ``test/lesion`` folders), under ``root/<source>-<hash>/``;
a folder generated with other settings is never overwritten (the hash names the settings).

Example:
    >>> import tempfile
    >>> from anomalib_sir.data.demo import SirDemo
    >>> datamodule = SirDemo(root=tempfile.mkdtemp(), image_size=64, num_train=4, num_test_normal=2,
    ...                      num_test_abnormal=2)
    >>> datamodule.prepare_data()
    >>> sorted(p.name for p in datamodule.dataset_dir.iterdir())
    ['ground_truth', 'manifest.json', 'test', 'train']

"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pandas import DataFrame
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import transform as sktransform
from tqdm.auto import tqdm

from .datamodules import SplitFolders

logger = logging.getLogger(__name__)

DemoSource = Literal["retina", "histology"]
_SOURCES: dict[str, str] = {"retina": "retina", "histology": "immunohistochemistry"}


def _source_image(source: DemoSource) -> np.ndarray:
    if source not in _SOURCES:
        msg = f"source must be one of {sorted(_SOURCES)}, got {source!r}"
        raise ValueError(msg)
    return getattr(skdata, _SOURCES[source])().astype(np.float32) / 255.0


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator, source: DemoSource) -> np.ndarray:
    """Cut a random, mildly transformed square crop (inside the fundus disc for the retina)."""
    height, width = image.shape[:2]
    crop = int(min(height, width) * (0.30 if source == "retina" else 0.55) * rng.uniform(0.85, 1.15))
    if source == "retina":  # stay inside the circular field of view
        radius = 0.5 * min(height, width) * 0.88 - crop / np.sqrt(2)
        angle, dist = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0, 1))
        cy, cx = height / 2 + dist * np.sin(angle), width / 2 + dist * np.cos(angle)
    else:
        cy, cx = rng.uniform(crop / 2, height - crop / 2), rng.uniform(crop / 2, width - crop / 2)
    top, left = int(cy - crop / 2), int(cx - crop / 2)
    patch = image[top : top + crop, left : left + crop]
    patch = sktransform.rotate(patch, rng.uniform(-15, 15), mode="reflect")
    patch = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = sktransform.resize(patch, (size, size), anti_aliasing=True)
    gamma = rng.uniform(0.9, 1.1)
    return np.clip(patch, 0, 1) ** gamma


def _lesion_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a soft, irregular blob mask in [0, 1] covering roughly 1-6 % of the image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    ry, rx = rng.uniform(0.06, 0.14, size=2) * size
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), size / 16)
    noise /= np.abs(noise).max() + 1e-8
    field = u**2 + v**2 + 0.6 * noise
    return np.clip(1.5 - field, 0, 1) ** 0.7


def _paste_lesion(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend a dark (haemorrhage-like) or bright (exudate-like) textured lesion into ``image``."""
    size = image.shape[0]
    alpha = _lesion_mask(size, rng)[..., None]
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), 1.5)[..., None]
    if rng.random() < 0.5:
        colour = np.array([0.35, 0.05, 0.03], dtype=np.float32)  # dark red blot
    else:
        colour = np.array([0.95, 0.85, 0.35], dtype=np.float32)  # bright yellow spot
    lesion = np.clip(colour + 0.08 * texture, 0, 1)
    blended = image * (1 - 0.85 * alpha) + lesion * 0.85 * alpha
    return np.clip(blended, 0, 1), (alpha[..., 0] > 0.25).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)


def generate_demo_dataset(
    directory: Path,
    source: DemoSource = "retina",
    image_size: int = 128,
    num_train: int = 16,
    num_test_normal: int = 16,
    num_test_abnormal: int = 16,
    seed: int = 0,
) -> Path:
    """Write the demo dataset in anomalib ``Folder`` layout; return ``directory``.

    Layout: ``train/good``, ``test/good``, ``test/lesion``, ``ground_truth/lesion`` (``*_mask.png``).
    """
    rng = np.random.default_rng(seed)
    image = _source_image(source)
    folders = {name: directory / name for name in ("train/good", "test/good", "test/lesion", "ground_truth/lesion")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    jobs = (
        [("train/good", i) for i in range(num_train)]
        + [("test/good", i) for i in range(num_test_normal)]
        + [("test/lesion", i) for i in range(num_test_abnormal)]
    )
    for split, index in tqdm(jobs, desc=f"Generating SIR demo ({source})", leave=False):
        crop = _random_crop(image, image_size, rng, source)
        if split == "test/lesion":
            crop, mask = _paste_lesion(crop, rng)
            _save(mask.astype(np.float32), folders["ground_truth/lesion"] / f"{index:03d}_mask.png")
        _save(crop, folders[split] / f"{index:03d}.png")
    return directory


class SirDemo(SplitFolders):
    """Demo datamodule over generated crops of a real fundus or histology image (SIR's own readers and splits).

    Normal = crops of the real image; abnormal = crops with **synthetic** lesions (with masks). Use it to
    try the package offline; use the medical datamodules for real evaluations. The generated folder is a
    :class:`~anomalib_sir.data.SplitFolders` layout (``train/good``, ``test/good``, ``test/lesion``,
    ``ground_truth/lesion``); by default half of the test images (stratified) are a labelled validation set.

    Args:
        root: where generated datasets are kept (a sub-folder per settings hash).
        source: ``"retina"`` (fundus photograph) or ``"histology"`` (IHC stain).
        image_size: side of the generated square images (pixels).
        num_train, num_test_normal, num_test_abnormal: how many images to generate.
        generation_seed: seed of the generated images.
        val_split_mode, val_split_ratio: validation policy (see :class:`~anomalib_sir.data.MedicalDataModule`).
        **kwargs: other :class:`~anomalib_sir.data.MedicalDataModule` arguments (``shot``, ``seed``, loaders ...).

    """

    def __init__(
        self,
        root: str | Path = "./datasets/sir_demo",
        source: DemoSource = "retina",
        image_size: int = 128,
        num_train: int = 16,
        num_test_normal: int = 16,
        num_test_abnormal: int = 16,
        generation_seed: int = 0,
        val_split_mode: str = "from_test",
        val_split_ratio: float = 0.5,
        **kwargs: Any,
    ) -> None:
        if source not in _SOURCES:
            msg = f"source must be one of {sorted(_SOURCES)}, got {source!r}"
            raise ValueError(msg)
        self.settings = {
            "source": source,
            "image_size": int(image_size),
            "num_train": int(num_train),
            "num_test_normal": int(num_test_normal),
            "num_test_abnormal": int(num_test_abnormal),
            "seed": int(generation_seed),
            "version": 1,
        }
        digest = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:8]
        self.dataset_dir = Path(root).expanduser().resolve() / f"{source}-{digest}"
        kwargs.setdefault("name", f"sir_demo_{source}")
        kwargs.setdefault("num_workers", 0)
        super().__init__(
            root=self.dataset_dir,
            normal_dir="good",
            abnormal_dirs="lesion",
            val_dir="",
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            **kwargs,
        )

    def prepare_data(self) -> None:
        """Generate the images once (skipped when a complete dataset with these settings exists)."""
        manifest = self.dataset_dir / "manifest.json"
        if manifest.is_file():
            return
        if self.dataset_dir.exists() and any(self.dataset_dir.iterdir()):
            msg = (
                f"{self.dataset_dir} exists but has no manifest.json (an interrupted generation?). "
                "Remove it or choose another `root`."
            )
            raise FileExistsError(msg)
        logger.info("Generating the SIR demo dataset in %s", self.dataset_dir)
        generate_demo_dataset(self.dataset_dir, **{k: v for k, v in self.settings.items() if k != "version"})
        manifest.write_text(json.dumps({**self.settings, "note": "DEMO: synthetic lesions"}, indent=2))

    def make_samples(self) -> DataFrame:
        """Generate the images if needed, then list them (see :class:`~anomalib_sir.data.SplitFolders`)."""
        self.prepare_data()
        return super().make_samples()
