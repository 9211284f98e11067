"""Register a new domain in a trained Sir checkpoint from k normal images, into a new checkpoint file.

What ``anomalib-sir add-domain`` runs: no gradient step, a few seconds on a CPU (see
:meth:`anomalib_sir.Sir.add_domain`). The input checkpoint is never modified; the output must not exist.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> add_domain_to_checkpoint(folder / "model.ckpt", "oct", [folder], folder / "model.ckpt")
    Traceback (most recent call last):
    ...
    anomalib_sir.deploy.errors.DeployError: .../model.ckpt: the output is the input checkpoint; pass another ...

"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DeployError


@dataclass(frozen=True)
class DomainAdded:
    """What :func:`add_domain_to_checkpoint` wrote."""

    output: Path
    name: str
    num_images: int
    seconds: float
    domains: tuple[str, ...]

    def summary(self) -> str:
        """One line for the console."""
        return (
            f"added domain {self.name!r} from {self.num_images} image(s) in {self.seconds:.1f} s: {self.output}"
            f" (domains: {', '.join(self.domains)})"
        )


def add_domain_to_checkpoint(
    checkpoint: str | Path, name: str, inputs: Sequence[str | Path], output: str | Path
) -> DomainAdded:
    """Read the normal images in ``inputs``, add them to the checkpoint's model as domain ``name``, save to ``output``.

    Raises:
        DeployError: the output exists or is the input, the name is taken, an input cannot be read, or the
            checkpoint is not a Sir checkpoint (one line each, naming the file and the fix).

    """
    checkpoint, output = Path(checkpoint), Path(output)
    if output.resolve() == checkpoint.resolve():
        raise DeployError(
            f"{output}: the output is the input checkpoint", fix="pass another --output (never overwritten)"
        )
    if output.exists():
        raise DeployError(
            f"{output} already exists", fix="pass a new --output path (checkpoints are never overwritten)"
        )
    import torch

    from .checkpoint import load_sir_checkpoint
    from .predict import iter_scan_images

    model = load_sir_checkpoint(checkpoint)
    if name in model.domain_names:
        raise DeployError(
            f"{checkpoint} already has a domain named {name!r} (domains: {', '.join(model.domain_names)})",
            fix="pass another --name",
        )
    skipped: list[Path] = []
    images = [torch.from_numpy(scan.image).permute(2, 0, 1).contiguous() for scan in iter_scan_images(inputs, skipped)]
    if skipped:
        raise DeployError(
            f"{skipped[0]} cannot be read as an image", fix="remove it from the reference images or fix it"
        )
    start = time.perf_counter()
    model.add_domain(name, images)
    seconds = time.perf_counter() - start
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["state_dict"] = model.state_dict()
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("xb") as handle:
        torch.save(saved, handle)
    return DomainAdded(output, name, len(images), seconds, tuple(model.domain_names))
