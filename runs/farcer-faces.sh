#!/bin/sh
# FARCER face slot (issue 12): the projector alone, on top of the shipped text head, trained on leak-free
# face pairs (0.3 matched / 0.3 neutral / 0.4 random) plus 300 neutral-line dialogues. Resumable: add --resume.
exec python -m training train farcer --corpus meld --data ../shared/data/meld --init checkpoints/farcer \
  --faces ../shared/data/fer2013 --face-mix 0.3,0.3,0.4 --neutral-lines 300 --projector-only \
  --face-drop-turn 0.2 --face-drop-dialogue 0 --shots 0 --past-labels none --epochs 1 --batch-size 4 \
  --accumulate 2 --lr 0.002 --max-turns 12 --val-dialogues 60 --val-every 60 --max-minutes 55 --bf16 \
  --seed 0 --threads 2 --out runs/farcer-faces "$@"
