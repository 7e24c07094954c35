"""Lightning 2-process DDP validating with an ``even_batches=False`` loader and a per-step synced metric
(tests/test_frameworks.py).

``python lightning_uneven.py DATA OUT``: ``self.log(..., sync_dist=True, on_step=True)`` is an all-reduce at
every validation batch; every rank writes the keys it validated (repeats left out) to OUT/uneven-rank{R}.json.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from meddiffuse_stream import MedDiffuseLoader


class Model(L.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        self.validated: list = []
        self.steps = 0

    def training_step(self, batch, index):
        return F.cross_entropy(self.net(batch["image"]), batch["label"])

    def validation_step(self, batch, index):
        real = ~batch["is_padding"]
        correct = (self.net(batch["image"]).argmax(1) == batch["label"])[real].float().sum()
        self.log("val_correct", correct, sync_dist=True, on_step=True, on_epoch=False, reduce_fx="sum")
        if not self.trainer.sanity_checking:
            self.validated += [k for k, keep in zip(batch["key"], real.tolist(), strict=True) if keep]
            self.steps += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_end(self) -> None:
        record = {"validated": self.validated, "steps": self.steps}
        (self.out / f"uneven-rank{self.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    data, out = sys.argv[1], Path(sys.argv[2])
    train = MedDiffuseLoader(data, 8, as_dict=True, seed=1)
    val = MedDiffuseLoader(data, 3, num_workers=1, as_dict=True, shuffle=False, even_batches=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
    )
    trainer.fit(Model(out), train_dataloaders=train, val_dataloaders=val)
