#!/bin/sh
# FARCER LoRA head on SmolLM2's top 10 layers, text only, 0-shot (issue 11). Resumable: add --resume.
exec python -m training train farcer --corpus meld --data ../shared/data/meld --core smollm2 --variant lora \
  --shots 0 --past-labels none --epochs 3 --batch-size 4 --accumulate 2 --lr 0.0005 --max-turns 12 \
  --lora-r 8 --lora-alpha 16 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  --lora-layers 10 --val-dialogues 60 --val-every 102 --max-minutes 95 --bf16 --seed 0 --threads 2 \
  --out runs/farcer-top10 "$@"
