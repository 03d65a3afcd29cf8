#!/bin/sh
# The face weight of the second face run's head (runs/farcer-faces2.sh, 7811b94ac7ba), chosen on the same
# validation views as runs/farcer-fw.sh; the result (644ad5652978, weight 0.7) is the shipped checkpoints/farcer.
set -e
rm -rf runs/farcer-fw2 && cp -r runs/farcer-faces2 runs/farcer-fw2
exec python -m training evaluate farcer --checkpoint runs/farcer-fw2 --corpus meld --data ../shared/data/meld \
  --split validation --limit 60 --choose-face-weight --face-corpus fer2013 --face-data ../shared/data/fer2013 \
  --face-tolerance 0.03 --seed 0 --threads 2 --out runs/farcer-fw2-val.json
