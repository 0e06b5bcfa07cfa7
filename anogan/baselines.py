"""Baselines on the images themselves and on the critic's features, scored on exactly the images the
evaluation maps: one-pass scorers (``x (B, C, H, W) -> {name: (B,)}``) like f-AnoGAN's, so their AUROCs
land in ``metrics.json`` beside the GAN scores and ``evaluate.py`` reproduces them.

- ``pixel_pca``: squared reconstruction error of x from the top ``pca_components`` principal components
  of the normal training images (pixels, flattened). Fitted with scikit-learn's ``PCA``.
- ``pixel_knn``: Euclidean distance in pixels from x to its ``k``-th nearest normal training image
  (k = 1: the 1-NN baseline of the one-class literature, e.g. Ruff et al. 2018, Golan & El-Yaniv 2018).
- ``feature_knn`` (``feature_knn: true``): the same distance between f(x) and f of the training images,
  f = D's feature layer (``Discriminator.features``, the paper's f).

Higher = more anomalous for every score. ``python train.py baselines=pixel`` (or evaluate.py) adds them.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


def training_images(dataset: Dataset, max_images: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """The normal training images (N, C, H, W) in [-1, 1] of a one-class DataModule's ``train_set``,
    in dataset order; the first ``max_images`` only when given."""
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(int(max_images)))
    batches = [b["image"] for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    if not batches:
        raise ValueError("baselines: the training split holds no image to fit the baselines on")
    return torch.cat(batches)


def knn_distance(queries: torch.Tensor, reference: torch.Tensor, k: int = 1, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance (B,) from each row of ``queries`` (B, F) to its k-th nearest row of
    ``reference`` (N, F); the reference is visited in chunks of ``chunk`` rows (memory B x chunk).
    Computed in float64: float32's matrix-product form of ``cdist`` is off by ~1e-3 near 0, which
    would break ties between near-duplicates. Returns float32."""
    if not 1 <= k <= len(reference):
        raise ValueError(f"baselines.knn={k} must lie in [1, {len(reference)}] (the training images)")
    best = None
    queries = queries.double()
    for i in range(0, len(reference), chunk):
        d = torch.cdist(queries, reference[i:i + chunk].double())
        best = d if best is None else torch.cat([best, d], 1)
        best = best.topk(min(k, best.shape[1]), dim=1, largest=False).values
    return best[:, k - 1].float()


class PixelBaselines(nn.Module):
    """``pixel_pca`` and ``pixel_knn`` of a batch, fitted on ``train`` (N, C, H, W) in [-1, 1].

    Raises ValueError when ``pca_components`` exceeds min(N, C*H*W) or ``knn`` is outside [1, N]."""

    def __init__(self, train: torch.Tensor, pca_components: int = 30, knn: int = 1):
        super().__init__()
        from sklearn.decomposition import PCA

        flat = train.flatten(1).double()
        limit = min(flat.shape)
        if not 1 <= pca_components <= limit:
            raise ValueError(
                f"baselines.pca_components={pca_components} must lie in [1, {limit}] "
                f"({flat.shape[0]} training images of {flat.shape[1]} pixels)"
            )
        if not 1 <= knn <= len(flat):
            raise ValueError(f"baselines.knn={knn} must lie in [1, {len(flat)}] (the training images)")
        pca = PCA(n_components=pca_components, random_state=0).fit(flat.numpy())
        self.register_buffer("mean", torch.from_numpy(pca.mean_).float())
        self.register_buffer("components", torch.from_numpy(pca.components_).float())  # (k, P), orthonormal rows
        self.register_buffer("train_images", train.flatten(1).float())
        self.knn = knn

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = x.flatten(1).float()
        centred = flat - self.mean
        recon = (centred @ self.components.T) @ self.components
        return {
            "pixel_pca": (centred - recon).pow(2).sum(1),
            "pixel_knn": knn_distance(flat, self.train_images, self.knn),
        }


class FeatureKNN(nn.Module):
    """``feature_knn``: distance from f(x) to the ``knn``-th nearest f(training image), f = D.features."""

    def __init__(self, discriminator: nn.Module, train: torch.Tensor, knn: int = 1, batch_size: int = 256):
        super().__init__()
        self.discriminator = discriminator
        with torch.no_grad():
            feats = torch.cat([discriminator.features(train[i:i + batch_size])
                               for i in range(0, len(train), batch_size)])
        self.register_buffer("train_features", feats)
        self.knn = knn

    def train(self, mode: bool = True) -> FeatureKNN:
        return super().train(False)  # D scores with BatchNorm's running statistics

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feature_knn": knn_distance(self.discriminator.features(x), self.train_features, self.knn)}


def baseline_scorers(cfg, datamodule, discriminator: nn.Module) -> list[nn.Module]:
    """The scorers of ``cfg`` (the ``baselines`` config group: ``pca_components``, ``knn``,
    ``feature_knn``, ``max_train_images``), fitted on ``datamodule.train_set``; [] when not configured."""
    if not cfg:
        return []
    if getattr(datamodule, "train_set", None) is None:
        raise ValueError(f"baselines need the normal training images, which {type(datamodule).__name__} does "
                         "not hold (data=scans scores new scans without them): drop baselines=...")
    train = training_images(datamodule.train_set, cfg.get("max_train_images"))
    scorers: list[nn.Module] = [PixelBaselines(train, int(cfg.pca_components), int(cfg.knn))]
    if cfg.get("feature_knn"):
        discriminator.eval()
        scorers.append(FeatureKNN(discriminator, train, int(cfg.knn)))
    log.info("baselines fitted on %d training images: %s", len(train),
             ", ".join(type(s).__name__ for s in scorers))
    return scorers
