"""runs/farcer-top10-final: runs/farcer-top10 with the weights of step 506 (its last validated step), the
step the corrected selection rule picks (runs/select_states.py -> runs/select-states.json). The label bias
is then chosen by `evaluate --choose-label-bias` on the same 60 validation dialogues (runs/farcer-top10-eval.sh)."""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from backend.checkpoints import read_checkpoint, write_checkpoint

src, dst = Path("runs/farcer-top10"), Path("runs/farcer-top10-final")
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
state = torch.load("/work/scratch/state-506.pt", weights_only=False)
meta = {"projector": "base", "image_dim": "256"}
save_file({k: v.contiguous() for k, v in state["trainable"].items()}, str(dst / "trainable.safetensors"), metadata=meta)
head = read_checkpoint(src)
selected = json.loads((t := Path("runs/select-states.json").read_text())[t.index("\n{") + 1:])
manifest = {k: v for k, v in head.manifest.items() if k not in ("format", "files", "version")}
manifest["metrics"] = {**head.metrics, "best_step": state["run"]["step"], "best_epoch": state["run"]["epoch"]}
manifest["data"] = {**head.data, "reselected": {
    "rule": "each validated step judged with its best label prior correction on the run's 60 validation dialogues",
    "command": "python runs/select_states.py runs/farcer-top10 runs/farcer-top10/trainable.safetensors STATE-306 STATE-408 STATE-506",
    "steps": {"204": selected["runs/farcer-top10/trainable.safetensors"]["validation"],
              "306": selected["/work/scratch/state-306.pt"]["validation"],
              "408": selected["/work/scratch/state-408.pt"]["validation"],
              "506": selected["/work/scratch/state-506.pt"]["validation"]}}}
write_checkpoint(dst, **manifest)
print(read_checkpoint(dst).version, state["run"]["step"])
