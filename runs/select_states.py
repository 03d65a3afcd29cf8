"""Re-select runs/farcer-top10's step by the rule `train farcer` now uses: each validated step judged with
its best label prior correction on the same 60 validation dialogues. The run itself (code before that rule)
selected on uncorrected weighted F1 and saved that step's weights; the other steps are the run's resume
states, copied after their validations. Usage: python runs/select_states.py HEAD STATE... (prints JSON)."""
import json
import sys

import torch

from backend.farcer_predictor import load_farcer
from backend.model_store import open_model_store
from backend.settings import get_settings
from training.corpora.registry import load_corpus, split
from training.farcer import Split, best_label_bias, label_scores
from training.outputs import find_checkpoint

torch.set_num_threads(2)
head = find_checkpoint(sys.argv[1], "farcer")
farcer, processor = load_farcer(head, open_model_store(get_settings()), "cpu")
val = split(load_corpus("meld", head.data["data"]), "validation")[: head.data["train"]["val_dialogues"]]
data = Split(val, [[None] * len(d) for d in val])
rows = {}
for path in sys.argv[2:]:
    if path.endswith(".safetensors"):
        from backend.farcer_predictor import load_trainable
        load_trainable(farcer, path)
    else:
        farcer.load_trainable_state(torch.load(path, weights_only=False)["trainable"])
    farcer.set_label_bias(())
    chosen, _ = best_label_bias(label_scores(farcer.eval(), processor, data, [], "none"), data, processor.labels,
                                head.data["label_counts"])
    rows[path] = chosen
    print(path, chosen["scale"], chosen["validation"], flush=True)
print(json.dumps(rows, indent=2))
