"""One training script for Accelerate under torchrun (tests/test_frameworks.py).

``torchrun --nproc_per_node=2 accelerate_train.py DATA OUT [STATE_DIR]``: the loader is built before the
Accelerator, prepared with the model, registered for checkpointing; states are saved after 5 steps and at the end
of epoch 0; STATE_DIR resumes from one. Every rank writes what it trained on and its metric counts.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from meddiffuse_stream import MedDiffuseLoader

data, out = sys.argv[1], Path(sys.argv[2])
resume = sys.argv[3] if len(sys.argv) > 3 else None
loader = MedDiffuseLoader(data, 4, num_workers=2, as_dict=True, seed=1)
evaluation = MedDiffuseLoader(data, 8, shuffle=False, as_dict=True)
accelerator = Accelerator(cpu=True)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
accelerator.register_for_checkpointing(loader)
if resume is not None:
    accelerator.load_state(resume)
trained, step = [], 0
for epoch in range(loader.epoch, 2):  # a restored loader knows its epoch; set_epoch keeps its position
    loader.set_epoch(epoch)
    for batch in loader:
        loss = F.cross_entropy(model(batch["image"]), batch["label"])
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        trained.append([epoch, list(batch["key"])])
        step += 1
        if resume is None and epoch == 0 and step == 5:
            accelerator.save_state(str(out / "state-step5"))
    if resume is None and epoch == 0:
        accelerator.save_state(str(out / "state-end0"))
counted = {"gathered": 0, "without_padding": 0, "keys": []}
with torch.no_grad():
    for batch in evaluation:
        predictions = model(batch["image"]).argmax(dim=1)
        everything = accelerator.gather_for_metrics(predictions)
        predictions, padding = accelerator.gather_for_metrics((predictions, batch["is_padding"]))
        counted["gathered"] += len(everything)
        counted["without_padding"] += int((~padding).sum())
        counted["keys"] += [k for k, p in zip(batch["key"], batch["is_padding"].tolist(), strict=True) if not p]
record = {"trained": trained, "eval": counted, "world": accelerator.num_processes}
(out / f"keys-rank{accelerator.process_index}.json").write_text(json.dumps(record))
accelerator.end_training()
