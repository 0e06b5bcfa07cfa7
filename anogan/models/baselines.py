"""Baselines on the images themselves, and nearest-neighbour scores in the spaces of the GAN's networks,
scored on exactly the images the evaluation maps: one-pass scorers (``x (B, C, H, W) -> {name: (B,)}``)
like f-AnoGAN's, so their AUROCs land in ``metrics.json`` beside the GAN scores and ``evaluate.py``
reproduces them.

- ``pixel_pca``: squared reconstruction error of x from the top ``pca_components`` principal components
  of the normal training images (pixels, flattened). Fitted with scikit-learn's ``PCA``.
- ``pixel_knn``: Euclidean distance in pixels from x to its ``k``-th nearest normal training image
  (k = 1: the 1-NN baseline of the one-class literature, e.g. Ruff et al. 2018, Golan & El-Yaniv 2018).
- ``feature_knn`` (``feature_knn: true``): the same distance between f(x) and f of the training images,
  f = D's feature layer (``Discriminator.features``, the paper's f).
- ``latent_knn`` (``latent_knn: true``, needs f-AnoGAN's encoder E): the same distance between E(x) and
  E of the training images, in G's latent space (our addition: f-AnoGAN scores ||x - G(E(x))||; this
  scores how far E(x) lies from where E puts the normal images. docs/benchmark.md: how it was chosen).
- ``encoder_knn`` (``encoder_knn: true``, needs E): the same distance between E's features of x (the
  flattened output of E's last block, before the head that maps it to z: ``E.features``) and those of the
  training images (our addition; chosen on validation runs as the benchmark's GAN-based score,
  ``encoder_knn10``: docs/benchmark.md).

``knn`` is one k or a list of them: every k gives each kNN score, named ``<score>`` for k = 1 and
``<score><k>`` otherwise (``knn: [1, 10]`` -> ``pixel_knn``, ``pixel_knn10``, ...).
Higher = more anomalous for every score. ``python train.py baselines=pixel`` (or evaluate.py) adds them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from anogan.errors import InputError

log = logging.getLogger(__name__)


def training_images(dataset: Dataset, max_images: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """The normal training images (N, C, H, W) in [-1, 1] of a one-class DataModule's ``train_set``,
    in dataset order; the first ``max_images`` only when given."""
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(int(max_images)))
    batches = [b["image"] for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    if not batches:
        raise InputError("baselines: the training split holds no image to fit the baselines on")
    return torch.cat(batches)


def knn_distance(queries: torch.Tensor, reference: torch.Tensor, k: int | Sequence[int] = 1,
                 chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance (B,) from each row of ``queries`` (B, F) to its k-th nearest row of
    ``reference`` (N, F), or (B, len(k)) for a list of k (one pass over the reference); the reference
    is visited in chunks of ``chunk`` rows (memory B x chunk). Computed in float64: float32's
    matrix-product form of ``cdist`` is off by ~1e-3 near 0, which would break ties between
    near-duplicates. Returns float32. Raises ValueError for a k outside [1, N]."""
    ks = check_knn(k, len(reference))
    best = None
    queries = queries.double()
    for i in range(0, len(reference), chunk):
        d = torch.cdist(queries, reference[i:i + chunk].double())
        best = d if best is None else torch.cat([best, d], 1)
        best = best.topk(min(max(ks), best.shape[1]), dim=1, largest=False).values
    out = best[:, [k_ - 1 for k_ in ks]].float()
    return out[:, 0] if isinstance(k, int) else out


def check_knn(knn, n_train: int | None = None) -> list[int]:
    """The k of ``baselines.knn`` (one int or a list) as a list; ValueError naming the key for a k that
    is no integer in [1, n_train] (the training images; only k >= 1 when ``n_train`` is None, before
    the data are read) or an empty list."""
    ks = list(knn) if isinstance(knn, (list, tuple)) else [knn]
    top = n_train if n_train is not None else float("inf")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top for k in ks):
        bound = f"[1, {n_train}] (the training images)" if n_train is not None else ">= 1"
        raise InputError(f"baselines.knn={knn!r} must be an integer or a list of integers in {bound}, "
                         "e.g. baselines.knn=1 or 'baselines.knn=[1,10]'")
    return ks


def knn_name(score: str, k: int) -> str:
    """The score name of the k-th-nearest-neighbour distance: ``score`` for k = 1, else ``score<k>``."""
    return score if k == 1 else f"{score}{k}"


class KNNScores(nn.Module):
    """``<name>`` / ``<name><k>`` for each k of ``knn``: distance (B,) from embed(x) to the k-th nearest
    embed(training image) (``knn_distance``; ``knn_name``). embed(x) = ``getattr(net, method)(x)``
    flattened, or the pixels when ``net`` is None; ``net`` scores in eval mode (BatchNorm's running
    statistics). ``train`` (N, C, H, W) in [-1, 1]; embedded once, in batches of ``batch_size``."""

    def __init__(self, name: str, train: torch.Tensor, knn: int | Sequence[int] = 1,
                 net: nn.Module | None = None, method: str = "forward", batch_size: int = 256):
        super().__init__()
        self.name, self.net, self.method = name, net, method
        self.ks = check_knn(knn, len(train))
        if net is not None:
            net.eval()
        with torch.no_grad():
            reference = torch.cat([self.embed(train[i:i + batch_size]) for i in range(0, len(train), batch_size)])
        self.register_buffer("reference", reference)

    def train(self, mode: bool = True) -> KNNScores:
        return super().train(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return (x if self.net is None else getattr(self.net, self.method)(x)).flatten(1).float()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        d = knn_distance(self.embed(x), self.reference, self.ks)
        return {knn_name(self.name, k): d[:, j] for j, k in enumerate(self.ks)}


class PixelBaselines(nn.Module):
    """``pixel_pca`` and ``pixel_knn`` (one per k of ``knn``, ``KNNScores``) of a batch, fitted on
    ``train`` (N, C, H, W) in [-1, 1].

    Raises ValueError when ``pca_components`` exceeds min(N, C*H*W) or a k of ``knn`` is outside [1, N]."""

    def __init__(self, train: torch.Tensor, pca_components: int = 30, knn: int | Sequence[int] = 1):
        super().__init__()
        from sklearn.decomposition import PCA

        flat = train.flatten(1).double()
        limit = min(flat.shape)
        if not 1 <= pca_components <= limit:
            raise InputError(
                f"baselines.pca_components={pca_components} must lie in [1, {limit}] "
                f"({flat.shape[0]} training images of {flat.shape[1]} pixels)"
            )
        self.knn = KNNScores("pixel_knn", train, knn)
        pca = PCA(n_components=pca_components, random_state=0).fit(flat.numpy())
        self.register_buffer("mean", torch.from_numpy(pca.mean_).float())
        self.register_buffer("components", torch.from_numpy(pca.components_).float())  # (k, P), orthonormal rows

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = x.flatten(1).float()
        centred = flat - self.mean
        recon = (centred @ self.components.T) @ self.components
        return {"pixel_pca": (centred - recon).pow(2).sum(1), **self.knn(x)}


def FeatureKNN(discriminator: nn.Module, train: torch.Tensor, knn: int | Sequence[int] = 1) -> KNNScores:
    """``feature_knn``: distance from f(x) to the k-th nearest f(training image), f = D.features."""
    return KNNScores("feature_knn", train, knn, discriminator, "features")


def LatentKNN(encoder: nn.Module, train: torch.Tensor, knn: int | Sequence[int] = 1) -> KNNScores:
    """``latent_knn``: distance from E(x) to the k-th nearest E(training image), E = f-AnoGAN's encoder
    (z_dim coordinates of G's latent space)."""
    return KNNScores("latent_knn", train, knn, encoder)


def EncoderKNN(encoder: nn.Module, train: torch.Tensor, knn: int | Sequence[int] = 1) -> KNNScores:
    """``encoder_knn``: distance from E's features of x (``E.features``: the flattened output of the
    encoder's last block, (B, F)) to the k-th nearest features of a training image, E = f-AnoGAN's encoder."""
    return KNNScores("encoder_knn", train, knn, encoder, "features")


#: the kNN scores in E's spaces: baselines key -> scorer (each needs f-AnoGAN's encoder)
ENCODER_KNN = {"latent_knn": LatentKNN, "encoder_knn": EncoderKNN}


def baseline_scorers(cfg, datamodule, discriminator: nn.Module, encoder: nn.Module | None = None) -> list[nn.Module]:
    """The scorers of ``cfg`` (the ``baselines`` config group: ``pca_components``, ``knn``,
    ``feature_knn``, ``latent_knn``, ``encoder_knn``, ``max_train_images``), fitted on
    ``datamodule.train_set``; [] when not configured. ``latent_knn`` and ``encoder_knn`` need f-AnoGAN's
    ``encoder`` (InputError naming the fix without one)."""
    if not cfg:
        return []
    if getattr(datamodule, "train_set", None) is None:
        raise InputError(f"baselines need the normal training images, which {type(datamodule).__name__} does "
                         "not hold (data=scans scores new scans without them): drop baselines=...")
    knn = check_baselines(cfg, encoder is not None)
    train = training_images(datamodule.train_set, cfg.get("max_train_images"))
    scorers: list[nn.Module] = [PixelBaselines(train, int(cfg.pca_components), knn)]
    if cfg.get("feature_knn"):
        scorers.append(FeatureKNN(discriminator, train, knn))
    scorers += [scorer(encoder, train, knn) for key, scorer in ENCODER_KNN.items() if cfg.get(key)]
    log.info("baselines fitted on %d training images: %s", len(train),
             ", ".join(getattr(s, "name", type(s).__name__) for s in scorers))
    return scorers


def check_baselines(cfg, has_encoder: bool) -> list[int] | None:
    """Refuse a ``baselines`` config that cannot be scored, before any training (``train.py``) or
    mapping: keys given without the group (``+baselines.latent_knn=true`` alone), a ``knn`` that is no
    positive integer or list of them, ``pca_components`` < 1, ``latent_knn`` or ``encoder_knn`` without
    f-AnoGAN's encoder.
    ValueError naming the key and a fix. Returns the k of ``knn`` as a list; None for no baselines."""
    if not cfg:
        return None
    if "knn" not in cfg or "pca_components" not in cfg:
        raise InputError(f"baselines.{', baselines.'.join(cfg)} given without the baselines group: add "
                         "baselines=pixel (e.g. baselines=pixel baselines.latent_knn=true)")
    ks = check_knn(OmegaConf.to_container(cfg.knn) if OmegaConf.is_config(cfg.knn) else cfg.knn)
    pca = cfg.pca_components
    if isinstance(pca, bool) or not isinstance(pca, int) or pca < 1:
        raise InputError(f"baselines.pca_components={pca!r} must be a positive integer, "
                         "e.g. baselines.pca_components=30")
    for key in ENCODER_KNN:
        if cfg.get(key) and not has_encoder:
            raise InputError(f"baselines.{key}=true needs f-AnoGAN's encoder E (checkpoints/encoder.ckpt): train "
                             "with encoder=izif (for a run without one, python train.py ckpt_path=auto "
                             "hydra.run.dir=<its run dir> encoder=izif, with the run's data and model overrides, "
                             f"trains only E), or drop it with baselines.{key}=false")
    return ks
