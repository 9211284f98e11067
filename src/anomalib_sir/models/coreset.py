"""Core-set selection for memory banks: anomalib's k-center greedy sampler, quiet and with bounded memory."""

from __future__ import annotations

import torch
from anomalib.models.components import KCenterGreedy


class QuietKCenterGreedy(KCenterGreedy):
    """anomalib's k-center greedy core-set (same selection) without its tqdm bar or a new ``(N, d)`` tensor per step.

    The loop is anomalib's, from its own pieces; :meth:`update_distances` writes the same distances into buffers
    allocated once. A temporary per selected vector fragmented glibc's heap (a 150-image bank once grew a process
    to 24 GB), and anomalib's bar beside Lightning's Rich bar cost memory too.

    Example:
        >>> QuietKCenterGreedy(torch.randn(100, 8), sampling_ratio=0.1).sample_coreset().shape
        torch.Size([10, 8])

    """

    def select_coreset_idxs(self) -> list[int]:
        """Greedily select ``coreset_size`` indices, each the farthest from those selected before."""
        self.model.fit(self.embedding)
        self.features = self.model.transform(self.embedding)
        self.reset_distances()
        self._difference = torch.empty_like(self.features)
        self._distances = self.features.new_empty(len(self.features), 1)
        idx = torch.randint(high=self.n_observations, size=(1,), device=self.features.device).squeeze()
        selected = [idx]
        for _ in range(self.coreset_size - 1):
            self.update_distances(cluster_center=idx)
            idx = self.get_new_idx()
            self.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
            selected.append(idx)
        del self._difference, self._distances
        return torch.stack(selected).cpu().tolist()

    def update_distances(self, cluster_center: int | torch.Tensor | None) -> None:
        """Lower the minimum distances with those to ``cluster_center`` (anomalib's L2 norm, in place)."""
        if cluster_center is None:
            return
        center = self.features[cluster_center].squeeze()
        torch.sub(self.features, center, out=self._difference)
        torch.linalg.norm(self._difference, ord=2, dim=1, keepdim=True, out=self._distances)
        if self.min_distances is None:
            self.min_distances = self._distances.clone()
        else:
            torch.minimum(self.min_distances, self._distances, out=self.min_distances)
