"""One training script for Lightning, run unchanged on 1 device and as 2-process DDP (tests/test_frameworks.py).

``python lightning_fit.py DATA OUT DEVICES [CKPT]``: the loaders are built before the Trainer and passed to fit,
as with DataLoaders; every rank writes the keys it trained and validated on to OUT/keys-rank{R}.json.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from meddiffuse_stream import MedDiffuseLoader

data, out, devices = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
resume = sys.argv[4] if len(sys.argv) > 4 else None
train = MedDiffuseLoader(data, 4, num_workers=2, as_dict=True, seed=1)
val = MedDiffuseLoader(data, 8, num_workers=1, as_dict=True, shuffle=False)


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        self.trained: list = []
        self.validated: list = []

    def training_step(self, batch, index):
        self.trained.append([self.current_epoch, index, list(batch["key"])])
        return F.cross_entropy(self.net(batch["image"]), batch["label"])

    def validation_step(self, batch, index):
        self.validated.append([self.current_epoch, self.trainer.sanity_checking, list(batch["key"])])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_end(self) -> None:
        record = {"trained": self.trained, "validated": self.validated, "len_train": len(train), "len_val": len(val)}
        (out / f"keys-rank{self.global_rank}.json").write_text(json.dumps(record))


checkpoints = [
    ModelCheckpoint(dirpath=out / "ckpt", filename="{step}", every_n_train_steps=5, save_top_k=-1),
    ModelCheckpoint(dirpath=out / "ckpt", filename="end-{epoch}", save_on_train_epoch_end=True, save_top_k=-1),
]
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=2,
                    logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=checkpoints,
                    default_root_dir=out)  # fmt: skip
trainer.fit(Model(), train_dataloaders=train, val_dataloaders=val, ckpt_path=resume)
