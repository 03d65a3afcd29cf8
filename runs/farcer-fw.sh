#!/bin/sh
# The face weight of the shipped face head b6077db932e5 (issue 12), chosen on validation views: text only,
# a neutral face, a random-emotion face (60 MELD validation dialogues) and 60 dialogues of held-out neutral
# lines; the best pooled weighted F1 among the weights whose random-face view is within 0.03 of text only.
set -e
rm -rf runs/farcer-fw && cp -r checkpoints/farcer runs/farcer-fw
exec python -m training evaluate farcer --checkpoint runs/farcer-fw --corpus meld --data ../shared/data/meld \
  --split validation --limit 60 --choose-face-weight --face-corpus fer2013 --face-data ../shared/data/fer2013 \
  --face-tolerance 0.03 --seed 0 --threads 2 --out runs/farcer-fw-val.json
