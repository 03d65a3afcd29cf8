#!/bin/sh
# FARCER face slot, second run (issue 12): continues the projector of the shipped face head b6077db932e5
# with fewer telling faces (0.2 matched / 0.2 neutral / 0.6 random) and 150 neutral-line dialogues, and
# chooses the step whose random-face validation stays within 0.03 of text only. Resumable: add --resume.
exec python -m training train farcer --corpus meld --data ../shared/data/meld --init checkpoints/farcer \
  --faces ../shared/data/fer2013 --face-mix 0.2,0.2,0.6 --neutral-lines 150 --projector-only \
  --face-drop-turn 0.2 --face-tolerance 0.03 --shots 0 --past-labels none --epochs 1 --max-steps 120 \
  --batch-size 4 --accumulate 2 --lr 0.002 --max-turns 12 --val-dialogues 60 --val-every 40 --max-minutes 65 \
  --bf16 --seed 1 --threads 2 --out runs/farcer-faces2 "$@"
