"""Accelerate under torchrun, where it learns about epochs from its own DataLoaderShard (tests/test_frameworks.py).

``torchrun --nproc_per_node=2 accelerate_epochs.py DATA OUT``: gradient accumulation over this loader and over a
prepared torch DataLoader of the same size (optimizer steps per epoch must agree); ``skip_first_batches`` on this
loader (its message); an ``even_batches=False`` evaluation with ``gather_for_metrics`` at every batch (every
sample once, no hang). Every rank writes OUT/epochs-rank{R}.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from meddiffuse_stream import MedDiffuseLoader

data, out = sys.argv[1], Path(sys.argv[2])
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
ours = MedDiffuseLoader(data, 4, num_workers=2, as_dict=True, seed=1)
theirs = DataLoader(TensorDataset(torch.zeros(len(ours.dataset), 64), torch.zeros(len(ours.dataset)).long()), 4)
model, optimizer, ours, theirs = accelerator.prepare(model, optimizer, ours, theirs)


def optimizer_steps(loader, take) -> list[int]:
    """Optimizer steps per epoch under accumulate(), for 2 epochs."""
    steps = []
    for epoch in range(2):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        synced = 0
        for batch in loader:
            images, labels = take(batch)
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(images.reshape(len(images), -1)[:, :64]), labels)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                synced += int(accelerator.sync_gradients)
        steps.append(synced)
    return steps


record = {
    "ours": optimizer_steps(ours, lambda b: (b["image"], b["label"])),
    "theirs": optimizer_steps(theirs, lambda b: (b[0], b[1])),
    "batches": [len(ours), len(theirs)],
}
try:
    for _ in accelerator.skip_first_batches(ours, 2):
        break
    record["skip"] = "no error"
except TypeError as error:
    record["skip"] = str(error)

gathered: list[int] = []
for workers, shuffle in ((0, False), (2, True)):
    evaluation = MedDiffuseLoader(data, 3, even_batches=False, as_dict=True, num_workers=workers, shuffle=shuffle)
    ids = []
    with torch.no_grad():
        for batch in evaluation:  # 3 per batch, 2 ranks, 103 samples: 51 and 52 before (17 and 18 batches)
            index = torch.tensor([int(k[-3:]) + (1000 if k.startswith("b") else 0) for k in batch["key"]])
            ids += accelerator.gather_for_metrics(index).tolist()  # a collective at every batch
    evaluation.close()
    gathered.append(ids)
record["gathered"] = gathered
(out / f"epochs-rank{accelerator.process_index}.json").write_text(json.dumps(record))
accelerator.end_training()
