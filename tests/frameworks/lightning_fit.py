"""One training script for Lightning, run unchanged on 1 device and as 2-process DDP (tests/test_frameworks.py).

``python lightning_fit.py DATA OUT DEVICES STRATEGY [CKPT]``: the loaders are built before the Trainer and passed
to fit, as with DataLoaders; every rank writes the keys it trained and validated on to OUT/keys-rank{R}.json.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from meddiffuse_stream import MedDiffuseLoader


class Model(L.LightningModule):
    def __init__(self, out: Path, lengths: tuple[int, int]) -> None:
        super().__init__()
        self.out = out
        self.lengths = lengths  # of the loaders, as the parent saw them: ddp_spawn pickles them into the ranks
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
        train, val = self.trainer.train_dataloader, self.trainer.val_dataloaders
        record = {"trained": self.trained, "validated": self.validated, "len_train": len(train), "len_val": len(val)}
        (self.out / f"keys-rank{self.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":  # ddp_spawn imports this file again in each rank
    data, out, devices, strategy = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    resume = sys.argv[5] if len(sys.argv) > 5 else None
    train = MedDiffuseLoader(data, 4, num_workers=2, as_dict=True, seed=1)
    val = MedDiffuseLoader(data, 8, num_workers=1, as_dict=True, shuffle=False)
    checkpoints = [
        ModelCheckpoint(dirpath=out / "ckpt", filename="{step}", every_n_train_steps=5, save_top_k=-1),
        ModelCheckpoint(dirpath=out / "ckpt", filename="end-{epoch}", save_on_train_epoch_end=True, save_top_k=-1),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=checkpoints,
        default_root_dir=out,
    )
    trainer.fit(Model(out, (len(train), len(val))), train_dataloaders=train, val_dataloaders=val, ckpt_path=resume)
