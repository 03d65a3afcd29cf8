#!/bin/sh
# Test views of the shipped FARCER head (issue 12), recorded in its card; the text head's neutral-lines
# view beside it for comparison (that head, d81387661660 from commit ccb09f8, reads no faces).
set -e
rm -rf runs/farcer-text && mkdir -p runs/farcer-text && git archive ccb09f8 checkpoints/farcer | tar -x -C runs/farcer-text
M="--corpus meld --data ../shared/data/meld --split test --seed 0 --threads 2"
F="--face-corpus fer2013 --face-data ../shared/data/fer2013"
H="--checkpoint checkpoints/farcer"
python -m training evaluate farcer $H $M --paired-faces random $F --out runs/farcer-faces-test-random.json --record "MELD test, a face of a random emotion on every turn"
python -m training evaluate farcer $H $M --paired-faces neutral $F --out runs/farcer-faces-test-neutral.json --record "MELD test, a neutral face on every turn"
python -m training evaluate farcer $H $M --neutral-lines 100 $F --out runs/farcer-faces-test-neutral-lines.json --record "emotion-neutral lines beside FER2013 test faces (the face decides)"
python -m training evaluate farcer --checkpoint runs/farcer-text/checkpoints/farcer $M --neutral-lines 100 $F --out runs/farcer-text-test-neutral-lines.json
python -m training evaluate farcer $H $M --protocol last-turn --out runs/farcer-faces-test-text.json --record "MELD test, text only"
python -m training evaluate farcer $H $M --paired-faces matched $F --out runs/farcer-faces-test-matched.json --record "MELD test, label-matched faces (leaks the label: a pipeline check only)"
