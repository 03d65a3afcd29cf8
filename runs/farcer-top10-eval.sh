#!/bin/sh
# After runs/farcer-top10.sh, runs/select_states.py and runs/final_head.py: the label prior correction chosen
# on the run's 60 validation dialogues (as `train` now does), then MELD test.
set -e
python -m training evaluate farcer --checkpoint runs/farcer-top10-final --corpus meld --data ../shared/data/meld \
  --split validation --limit 60 --choose-label-bias --threads 2 --out runs/farcer-top10-val.json
python -m training evaluate farcer --checkpoint runs/farcer-top10-final --corpus meld --data ../shared/data/meld \
  --split test --protocol last-turn --seed 0 --threads 2 --out runs/farcer-top10-test.json --record "MELD test, text only"
