"""``scores.h5``: one row per evaluated image, written batch by batch so a killed evaluation resumes.

Datasets (N rows): ``index``, ``label``, ``split``, one per score (``scores/<name>``), ``z``,
``z_reference``, ``mapping_loss`` (first, last step), with ``inversion.restarts`` R > 1 ``restart_losses``
(N, R: every start's final loss; the kept one is the lowest), ``recorded/<step>/<name>`` for
``inversion.record_steps``, with ``store_maps`` ``residual_map`` and ``generated``, and, written when
the test epoch completes, one p-value per score (``p_value/<name>``): (1 + #{normal >= s}) / (n + 1)
against the scores of the n calibration rows (``anogan.data.datamodule.calibration_rows``: the normal
validation images, or the patches of ``data.normal_path``'s normal scans), the same scores the
label-free thresholds are calibrated on (``anogan.metrics.conformal``; the group's ``calibrated_on``
attribute names them; NaN without them; float64); every other floating dataset is float32.
Attributes: what changes a row, the key of a resume: the mapping's settings (lam, steps, lr, seed,
reference, record_steps, prior, init, early_stop, tol, patience, precision, restarts), the content hashes of the GAN
(``gan``, ``anogan.runtime.checkpoints.gan_identity``) and of the one-pass scorers and encoder (``scorers``),
and the evaluation's data config (``data``, JSON; minus loader settings that change no row).

While the evaluation runs the rows go to ``scores.h5.partial``; it is renamed to ``scores.h5`` when
the test epoch completes. A new evaluation with the same settings in the same run directory finds the
partial file and reuses its rows instead of mapping those images again (z_1 depends only on (seed,
index), so the result is the same). The attribute ``rows`` counts the rows of completely written
batches; rows beyond it (a batch torn by a kill) are dropped and mapped again, and only images not yet
in the file are appended, so a resumed file equals an uninterrupted one whatever the batch size.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch

from anogan.data.datamodule import calibration_rows
from anogan.metrics.conformal import p_values
from anogan.runtime.distributed import gather_rows

log = logging.getLogger(__name__)
_SETTINGS = ("lam", "steps", "lr", "seed", "reference", "prior", "init", "early_stop", "tol", "patience", "precision",
             "restarts")
_KEY = (*_SETTINGS, "record_steps", "scorers", "gan", "data")
# data settings that change how images are loaded, not which images or their pixels
_LOADER_ONLY = ("batch_size", "eval_batch_size", "num_workers")


def _settings(trainer, pl_module) -> dict:
    """What a resumed file must share with this evaluation, everything that changes a row: the
    mapping's settings, the weights of G and D, of the one-pass scorers (f-AnoGAN, aCAE) and of the
    encoder of ``init=encoder``, and the data config (``datamodule.config``, set by the pipeline)."""
    from anogan.runtime.checkpoints import gan_identity, weights_identity

    hparams = pl_module.hparams
    s = {k: hparams[k] for k in _SETTINGS}
    s["record_steps"] = list(hparams["record_steps"])
    nets = [*getattr(pl_module, "scorers", ()), *([pl_module.encoder] if pl_module.encoder is not None else [])]
    s["scorers"] = ",".join(sorted(f"{type(m).__name__}:{weights_identity(m)}" for m in nets))
    s["gan"] = gan_identity(pl_module.generator, pl_module.discriminator)
    datamodule = getattr(trainer, "datamodule", None)
    data = {k: v for k, v in dict(getattr(datamodule, "config", None) or {}).items() if k not in _LOADER_ONLY}
    # data whose rows are not fixed by its config (data=scans: a folder) says which rows these are
    if getattr(datamodule, "fingerprint", None) is not None:
        data["fingerprint"] = datamodule.fingerprint
    s["data"] = json.dumps(data, sort_keys=True, default=str)
    return s


class ScoreFile(L.Callback):
    def __init__(self, path: str | os.PathLike, store_maps: bool = True, resume: bool = True):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.store_maps, self.resume = store_maps, resume

    # -- resume ------------------------------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        self._file, self._row, self._module = None, {}, pl_module
        self.settings = _settings(trainer, pl_module)
        resumed = False
        if trainer.is_global_zero:  # the one process that reads and writes the file (under DDP too)
            if self.partial.exists() and self.resume and self._matches(self.partial):
                self._file = h5py.File(self.partial, "a")
                if "p_value" in self._file:  # written at an epoch end that did not complete: written again
                    del self._file["p_value"]
                self._drop_torn_rows()
                keys = zip(self._file["split"][()].tolist(), self._file["index"][()].tolist())
                self._row = {k: i for i, k in enumerate(keys)}
                log.info("resuming from %s: %d images already mapped", self.partial, len(self._row))
                resumed = True
            else:
                self.partial.unlink(missing_ok=True)
        if trainer.world_size > 1:  # every process asks the file for its batches (see lookup)
            resumed = trainer.strategy.broadcast(resumed, src=0)
        pl_module.cache = self if resumed else None

    def _drop_torn_rows(self) -> None:
        """Cut every dataset to the rows of the last batch that was completely written (``attrs["rows"]``,
        set after its data): a batch torn by a kill is mapped again."""
        f = self._file
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        n = min([int(f.attrs.get("rows", f["index"].shape[0]))] + [f[k].shape[0] for k in names])
        torn = {k for k in names if f[k].shape[0] != n}
        for k in torn:
            f[k].resize(n, axis=0)
        if torn:
            log.info("%s: dropped the rows of a torn batch beyond row %d", self.partial, n)

    def _matches(self, path: Path) -> bool:
        try:
            with h5py.File(path, "r") as f:
                stored = {k: f.attrs.get(k) for k in _KEY}  # a key the file lacks differs from any setting
                stored["record_steps"] = list(f.attrs["record_steps"])
        except (OSError, KeyError):
            log.warning("%s is unreadable (killed while writing?); mapping from scratch", path)
            return False
        differ = [k for k, v in self.settings.items() if not np.array_equal(np.asarray(stored[k]), np.asarray(v))]
        if differ:
            log.warning("%s was written with other %s; mapping from scratch", path, ", ".join(differ))
        return not differ

    def lookup(self, split: torch.Tensor, index: torch.Tensor) -> dict | None:
        """The stored outputs of a batch, in ``Inversion.map_batch``'s format, when every image of it
        is in the partial file; else None.

        Under DDP every process calls this at every test batch (it is collective): the processes'
        (split, index) pairs go to process 0, which holds the file, and each gets its stored rows back
        when the batches of all processes are in the file; otherwise all of them map their batch, so
        that the callbacks' gathers stay matched. The file's rows need not come from as many
        processes: rows are found by (split, index)."""
        trainer = self._module.trainer
        if trainer.world_size == 1:
            return self._read(list(zip(split.tolist(), index.tolist())))
        keys = self._module.all_gather(torch.stack([split, index], 1).to(self._module.device)).cpu()
        out = None
        if trainer.is_global_zero:
            stored = [self._read([tuple(k) for k in rank.tolist()]) for rank in keys]
            out = stored if all(o is not None for o in stored) else None
        out = trainer.strategy.broadcast(out, src=0)
        return None if out is None else out[trainer.global_rank]

    def _read(self, keys: list[tuple[int, int]]) -> dict | None:
        if not self._row or not self.store_maps or any(k not in self._row for k in keys):
            return None
        rows = [self._row[k] for k in keys]
        f = self._file

        def take(name: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([f[name][r] for r in rows]))

        out = {
            "scores": {k: take(f"scores/{k}") for k in f["scores"]},
            "recorded": {int(t): {k: take(f"recorded/{t}/{k}") for k in f[f"recorded/{t}"]}
                         for t in f.get("recorded", {})},
            "residual_map": take("residual_map"),
            "generated": take("generated"),
            "z": take("z"),
            "z_reference": take("z_reference") if "z_reference" in f else None,
            "mapping_loss": take("mapping_loss"),
            "from_file": True,
        }
        if "restart_losses" in f:
            out["restart_losses"] = take("restart_losses")
        return out

    # -- writing -----------------------------------------------------------------------------------
    def _columns(self, outputs: dict) -> dict[str, np.ndarray]:
        cols = {k: outputs[k] for k in ("index", "label", "split", "z", "mapping_loss")}
        for k in ("z_reference", "restart_losses"):
            if outputs.get(k) is not None:
                cols[k] = outputs[k]
        cols.update({f"scores/{k}": v for k, v in outputs["scores"].items()})
        for t, d in outputs["recorded"].items():
            cols.update({f"recorded/{t}/{k}": v for k, v in d.items()})
        if self.store_maps:
            cols["residual_map"], cols["generated"] = outputs["residual_map"], outputs["generated"]
        # float32 whatever produced them (numpy has no bfloat16, and the file's dtypes stay one per column)
        return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in cols.items()}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs.get("from_file"):
            return
        cols = self._columns(outputs)
        if trainer.world_size > 1:  # every process's rows (the sampler pads with repeated images)
            cols = gather_rows(pl_module, cols)
        if not trainer.is_global_zero:
            return
        keys = list(zip(cols["split"].tolist(), cols["index"].tolist()))  # each image once in a batch
        # each image once in the file: a resumed batch, or a DDP padding repeat, may be there already
        new = np.array([k not in self._row for k in keys], dtype=bool)
        if not new.any():
            return
        cols = {k: v[torch.from_numpy(new)].cpu().numpy() for k, v in cols.items()}
        if self._file is None:
            self._file = h5py.File(self.partial, "w")
            for k, v in self.settings.items():
                self._file.attrs[k] = v
            for name, arr in cols.items():
                self._file.create_dataset(
                    name, shape=(0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]), dtype=arr.dtype,
                    chunks=(max(1, min(256, 2**16 // max(1, arr[0].size))), *arr.shape[1:]),
                )
        f = self._file
        n0 = f["index"].shape[0]
        for name, arr in cols.items():
            ds = f[name]
            ds.resize(n0 + len(arr), axis=0)
            ds[n0:] = arr
        f.flush()  # a killed evaluation keeps every finished batch
        f.attrs["rows"] = n0 + int(new.sum())  # committed only after the data: see _drop_torn_rows
        f.flush()
        self._row.update({k: n0 + j for j, k in enumerate(k for k, is_new in zip(keys, new) if is_new)})

    def _write_p_values(self) -> None:
        """``p_value/<score>`` of every row against the calibration rows' scores of that score."""
        f = self._file
        if "p_value" in f:
            del f["p_value"]
        normal = calibration_rows(f["split"][()], f["label"][()])
        group = f.create_group("p_value")
        group.attrs["calibrated_on"] = (f"the {int(normal.sum())} rows of split val (normal validation images or "
                                        "normal scans' patches)" if normal.any() else
                                        "nothing: no normal validation row, so every p-value is NaN (undefined)")
        for name in f["scores"]:
            s = f[f"scores/{name}"][()]
            p = p_values(s[normal], s)  # float64: "p <= alpha" is the flag, exactly (1 / 20 is not 0.05 in float32)
            group.create_dataset(name, data=p, maxshape=(None,), chunks=(max(1, min(256, len(p))),))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._file is not None:
            self._write_p_values()
            self._file.close()
            self._file = None
            if trainer.is_global_zero:
                os.replace(self.partial, self.path)
        pl_module.cache = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()  # keep the partial file for resuming
            self._file = None


def read_scores(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All datasets of a ``scores.h5`` as numpy arrays, keyed by their path in the file."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out.update({f"@{k}": v for k, v in f.attrs.items()})
    return out
