"""f-AnoGAN's encoder trainings on Fashion-MNIST development classes, scored on the validation split.

For each normal class: one WGAN-GP GAN (``model=wgangp_resnet``) trained by ``train.py`` without the
evaluation, then one encoder per preset of ``--encoders`` trained against that same GAN (``train.py
ckpt_path=auto`` on a copy of its checkpoint keeps the GAN and fits E only), then ``fanogan`` and
``fanogan_latent`` of every validation image (the 10 % of the training pool held out, all ten classes,
labelled; never the test set) and their AUROC (scikit-learn). Prints one table row per class and
encoder with the wall time of each job and the load average; writes ``results.json`` to ``--out``.

It runs whichever ``anogan`` Python imports, with that checkout's ``train.py``, so the same command
measures two versions of the code side by side (docs/method.md, "f-AnoGAN line by line"):

    PYTHONPATH=. python benchmarks/fanogan_release.py --out /tmp/after --encoders izi_f ziz izi
    PYTHONPATH=<checkout of the earlier code> python benchmarks/fanogan_release.py --out /tmp/before --encoders izif

``--lock FILE`` holds an exclusive lock on FILE around each job (a shared machine's queue for heavy jobs);
the wall times start once the lock is held. A job whose run directory holds ``job.json`` is not run again.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import anogan


@contextmanager
def held(lock: str):
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_job(args: list[str], lock: str | None, run: Path) -> dict:
    """Run ``train.py`` of the imported anogan's checkout with ``args`` in ``run``; its wall time and
    load, also kept in ``run/job.json``: a job that has one is not run again (an interrupted measurement
    continues where it stopped)."""
    done = run / "job.json"
    if done.is_file():
        return json.loads(done.read_text())
    root = Path(anogan.__file__).resolve().parents[1]
    with held(lock) if lock else nullcontext():
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        with open(run / "train.log", "w") as out:
            subprocess.run([sys.executable, str(root / "train.py"), *args], check=True, stdout=out,
                           stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(root)})
        job = {"wall_s": round(time.perf_counter() - t0, 1), "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    done.write_text(json.dumps(job))
    return job


def validation_aurocs(run: Path) -> dict:
    """AUROC of ``fanogan`` and ``fanogan_latent`` on the validation split of ``run``'s data config."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sklearn.metrics import roc_auc_score

    from anogan.models.encoder import FAnoGAN, load_encoder
    from anogan.models.inversion import load_gan

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    G, D, _, _ = load_gan(run / "checkpoints" / "last.ckpt")
    E, kappa = load_encoder(run / "checkpoints" / "encoder.ckpt")
    scorer = FAnoGAN(E, G.eval(), D.eval(), kappa)
    scores, labels = {}, []
    for batch in dm.val_dataloader():
        for name, value in scorer(batch["image"]).items():
            scores.setdefault(name, []).append(value)
        labels.append(batch["label"])
    y = torch.cat(labels).numpy()
    return {"n_normal": int((y == 0).sum()), "n_anomalous": int((y == 1).sum()),
            **{name: round(float(roc_auc_score(y, torch.cat(v).numpy())), 4) for name, v in scores.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", type=int, nargs="+", default=[2, 8])
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--encoders", nargs="+", default=["izi_f", "ziz", "izi"], help="conf/encoder presets")
    p.add_argument("--width", type=int, default=8, help="G and critic width (DIM)")
    p.add_argument("--epochs", type=int, default=8, help="GAN epochs (one critic step per batch)")
    p.add_argument("--encoder-epochs", type=int, default=5)
    p.add_argument("--encoder-lr", type=float, default=1e-3, help="E's Adam learning rate")
    p.add_argument("--lock", default=None)
    a = p.parse_args()
    results = []
    for c in a.classes:
        common = ["experiment=fashion_mnist", "model=wgangp_resnet", f"data.normal_classes=[{c}]", f"seed={a.seed}",
                  f"model.generator.width={a.width}", f"model.discriminator.width={a.width}",
                  "model.optimizer_g.lr=2e-4", "model.optimizer_d.lr=2e-4", f"trainer.max_epochs={a.epochs}",
                  "trainer.enable_progress_bar=false", "evaluate=false", "logger=none"]
        gan_dir = a.out / f"class{c}" / "gan"
        gan_dir.mkdir(parents=True, exist_ok=True)
        gan = run_job([*common, f"hydra.run.dir={gan_dir}"], a.lock, gan_dir)
        print(f"class {c}: GAN {gan}", flush=True)
        for enc in a.encoders:
            run = a.out / f"class{c}" / enc
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            if not (run / "job.json").is_file():
                shutil.copy(gan_dir / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
            job = run_job([*common, f"encoder={enc}", f"encoder.max_epochs={a.encoder_epochs}",
                           f"encoder.module.optimizer.lr={a.encoder_lr}", "ckpt_path=auto",
                           f"hydra.run.dir={run}"], a.lock, run)
            row = {"class": c, "seed": a.seed, "encoder": enc, "gan": gan, "encoder_job": job,
                   "val": validation_aurocs(run)}
            results.append(row)
            print(json.dumps(row), flush=True)
    (a.out / "results.json").write_text(json.dumps(
        {"code": str(Path(anogan.__file__).resolve().parents[1]), "args": {k: str(v) for k, v in vars(a).items()},
         "results": results}, indent=1))
    print("| class | encoder | val AUROC fanogan | fanogan_latent | GAN wall s | E wall s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['class']} | {r['encoder']} | {r['val']['fanogan']:.3f} | {r['val']['fanogan_latent']:.3f} "
              f"| {r['gan']['wall_s']} | {r['encoder_job']['wall_s']} |")


if __name__ == "__main__":
    main()
