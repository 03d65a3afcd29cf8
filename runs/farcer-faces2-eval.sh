#!/bin/sh
# Test views of the FARCER head from runs/farcer-faces2.sh (issue 12), once it is copied to
# checkpoints/farcer; each result is recorded in its card. (The label-matched pipeline check was not run
# for this head: with the face weight each face view takes two passes, about 20 CPU minutes.)
set -e
M="--corpus meld --data ../shared/data/meld --split test --seed 0 --threads 2"
F="--face-corpus fer2013 --face-data ../shared/data/fer2013"
H="--checkpoint checkpoints/farcer"
python -m training evaluate farcer $H $M --paired-faces random $F --out runs/farcer-faces2-test-random.json --record "MELD test, a face of a random emotion on every turn"
python -m training evaluate farcer $H $M --neutral-lines 100 $F --out runs/farcer-faces2-test-neutral-lines.json --record "emotion-neutral lines beside FER2013 test faces (the face decides)"
python -m training evaluate farcer $H $M --paired-faces neutral $F --out runs/farcer-faces2-test-neutral.json --record "MELD test, a neutral face on every turn"
python -m training evaluate farcer $H $M --protocol last-turn --out runs/farcer-faces2-test-text.json --record "MELD test, text only"
