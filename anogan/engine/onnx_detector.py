"""An exported detector (``python -m anogan.export``) run by onnxruntime alone: numpy, Pillow and
onnxruntime, no torch and no Lightning, so that it runs where the training code does not go.

``OnnxDetector(path)`` opens the ONNX file and reads its metadata (``metadata_props``, JSON strings; the
keys are ``META_KEYS``): the image size and channels, how a new image is read (the training data's
normalisation), the scores it outputs, each score's threshold calibrated without labels by the run's
evaluation (``metrics.json``, its ``calibrated`` entries), and the normal validation scores of that
evaluation (``scores.h5``, split ``val``) from which every new score gets a p-value
(``anogan.metrics.conformal.p_values``). ``detector(images)`` scores a batch (B, C, H, W) float32 in
[-1, 1]; ``detector.read_image(path)`` reads an image file the way ``evaluate.py data=scans`` reads a scan
of the GAN's size (``anogan.data.pixels``). Images of another size or channel count are refused in one
line (``InputError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from anogan.data.pixels import Normalisation, model_range, read_pages, unit
from anogan.errors import InputError, MissingInputError
from anogan.metrics.conformal import above, p_values

FORMAT = 1  # the layout of the metadata below; a reader refuses a file of a format it does not know
INPUT = "images"  # the graph's input: (batch, C, H, W) float32 in [-1, 1]
MAP = "residual_map"  # the graph's last output: (batch, H, W), the residual summed over channels, in [0, 2C]
META_KEYS = (
    "anogan_format", "anogan_version", "image_size", "channels", "normalisation", "scores", "residual_map",
    "thresholds", "pixel_calibration", "region_calibration", "normal_scores", "decision", "gan_identity", "source",
    "not_exported",
)
FLAG_RULE = "score > threshold"  # the conformal flag (anogan.metrics.conformal.above): p-value <= target FPR
EXTRA = "pip install 'anogan[export]' (onnx, onnxscript, onnxruntime)"


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime session of ``path`` on the CPU, with ``threads`` intra-op threads (None:
    onnxruntime's default, one per physical core). Raises InputError when onnxruntime is missing or the
    file is not an ONNX model, MissingInputError when there is no such file."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(f"onnxruntime is not installed: {EXTRA}") from None
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist; pass the .onnx file that python -m anogan.export wrote")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  onnxruntime raises its own exception types for a bad file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"{path} is not an ONNX model onnxruntime can run ({first}); pass the file that "
                         "python -m anogan.export wrote") from None


class OnnxDetector:
    """The one-pass scorer of a run, exported by ``python -m anogan.export``, on onnxruntime.

    Attributes: ``image_size`` S and ``channels`` C of the images it takes; ``scores``: the names of its
    scores, in output order (higher = more anomalous); ``thresholds`` {score: the calibrated threshold or
    None}; ``normal_scores`` {score: the normal validation scores (n,) float64, empty when not recorded};
    ``normalisation`` (``anogan.data.pixels.Normalisation``, or None when the training data's was not
    recorded); ``meta``: the whole metadata, decoded. ``threads``: onnxruntime's intra-op threads (None:
    its default).

    Raises InputError for a file that onnxruntime cannot run or that ``anogan.export`` did not write."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        stored = self.session.get_modelmeta().custom_metadata_map
        if "anogan_format" not in stored:
            raise InputError(f"{self.path} holds no anogan metadata (anogan_format); export the run with python -m "
                             "anogan.export ckpt_path=<run>/checkpoints/last.ckpt")
        self.meta = {k: json.loads(v) for k, v in stored.items() if k in META_KEYS}
        if self.meta["anogan_format"] != FORMAT:
            raise InputError(f"{self.path} has metadata format {self.meta['anogan_format']}, this anogan reads format "
                             f"{FORMAT}; export the run again with this anogan (python -m anogan.export)")
        self.image_size, self.channels = int(self.meta["image_size"]), int(self.meta["channels"])
        self.scores = list(self.meta["scores"])
        self.thresholds = {k: (self.meta.get("thresholds") or {}).get(k, {}).get("threshold") for k in self.scores}
        normal = self.meta.get("normal_scores") or {}
        self.normal_scores = {k: np.asarray(normal.get(k) or [], np.float64) for k in self.scores}
        recipe = self.meta.get("normalisation") or {}
        self.normalisation = Normalisation.from_recipe(recipe) if recipe.get("normalisation") else None

    # -- scoring ------------------------------------------------------------------------------------
    def check_images(self, images, where: str = "images") -> np.ndarray:
        """``images`` as a float32 array (B, C, S, S); InputError in one line, naming ``where``, for another
        shape (size or channel count) or non-finite values."""
        x = np.asarray(images)
        want = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            got = (f"{x.shape[-1]}x{x.shape[-2]} pixels with {x.shape[1]} channel(s)" if x.ndim == 4
                   else f"an array of shape {x.shape}")
            raise InputError(
                f"{where}: {got}, but {self.path.name} scores batches (B, {want[0]}, {want[1]}, {want[2]}): "
                f"{self.image_size}x{self.image_size} pixels, {self.channels} channel(s), as its GAN was trained; "
                "give images of that size and channel count (read_image reads files so), or export a GAN trained "
                "on images like yours")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputError(f"{where}: NaN or infinite values; images enter the model in [-1, 1]")
        return x

    def __call__(self, images, batch_size: int = 64) -> dict[str, np.ndarray]:
        """{score: (B,) float32 for each of ``scores``, ``residual_map``: (B, S, S) float32} of images
        (B, C, S, S) in [-1, 1], run ``batch_size`` images at a time."""
        x = self.check_images(images)
        names = [*self.scores, MAP]
        parts = [self.session.run(names, {INPUT: x[i : i + batch_size]}) for i in range(0, len(x), batch_size)]
        if not parts:
            return {n: np.zeros((0,) if n != MAP else (0, self.image_size, self.image_size), np.float32)
                    for n in names}
        return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}

    def p_values(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{score: p-values (B,) float64}: (1 + #{normal >= s}) / (n + 1) against the ``normal_scores``
        (``anogan.metrics.conformal.p_values``); NaN where no normal scores were recorded."""
        return {k: p_values(self.normal_scores[k], scores[k]) for k in self.scores}

    def flags(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """{score: (B,) bool, ``score > threshold`` (FLAG_RULE, ``anogan.metrics.conformal.above``) at the
        stored threshold, or None where the file holds no threshold for that score}; in float64, as the
        evaluation compares."""
        return {k: None if self.thresholds[k] is None else above(scores[k], self.thresholds[k])
                for k in self.scores}

    # -- image files --------------------------------------------------------------------------------
    def read_image(self, path: str | os.PathLike) -> list[np.ndarray]:
        """The pages of an image file (PNG, JPEG, TIFF; a multi-page TIFF has several) as the model's
        input, each (C, S, S) float32 in [-1, 1]: read as stored (``anogan.data.pixels.read_pages``; colour
        kept for a 3-channel GAN, else the luminance), scaled to [0, 1] by the training data's normalisation
        (``unit``), then to [-1, 1] (``model_range``): the steps and the code of ``evaluate.py data=scans``
        for a scan of the GAN's size (one patch). InputError in one line for a file of another size or
        channel count, non-finite pixels, or a file whose training normalisation was not recorded."""
        path = Path(path)
        if self.normalisation is None:
            recipe = self.meta.get("normalisation") or {}
            raise InputError(f"{self.path.name}: {recipe.get('reason', 'no normalisation recorded')}; it cannot tell "
                             "how to scale new images: export the run again where its training data is readable")
        out = []
        for k, page in enumerate(read_pages(path, colour=self.channels == 3)):
            c = 1 if page.ndim == 2 else page.shape[0]
            where = f"{path}" if k == 0 else f"{path} page {k}"
            if c != self.channels or page.shape[-2:] != (self.image_size, self.image_size):
                raise InputError(
                    f"{where}: {page.shape[-1]}x{page.shape[-2]} pixels with {c} channel(s), but {self.path.name} "
                    f"scores {self.image_size}x{self.image_size} images with {self.channels} channel(s), as its GAN "
                    f"was trained; resize or convert the images to {self.image_size}x{self.image_size} with "
                    f"{self.channels} channel(s), or score whole scans with python evaluate.py data=scans")
            if page.dtype.kind == "f" and not (np.isfinite(page).all() and (self.normalisation.normalise != "none" or (
                    page.min() >= 0 and page.max() <= 1))):
                raise InputError(f"{where}: float pixels with NaN / inf or, without normalisation, outside [0, 1]; "
                                 "rescale them to [0, 1] or store uint8 / uint16")
            x = model_range(unit(page, self.normalisation))
            out.append(np.ascontiguousarray(x if x.ndim == 3 else x[None], dtype=np.float32))
        return out
