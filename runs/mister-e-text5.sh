#!/bin/sh
# MiSTER-E with a text encoder trained 5 epochs at lr 3e-4 (the shipped one: 3 at 5e-4), the shipped speech
# encoder, and stage 2 as shipped: an experiment toward text only >= 0.60 (issue 12). Not shipped.
set -e
OUT=runs/mister-e-text5
COMMON="--corpus meld --data ../shared/data/meld --speech-corpus ravdess --speech-data ../shared/data/ravdess --seed 0 --out $OUT"
python -m training train mister-e $COMMON --stage 1 --text-epochs 5 --text-lr 0.0003
python -m training train mister-e $COMMON --stage 2 --aligned-speech --preset small --epochs 12 --batch-size 8 \
  --lr 0.0005 --speech-drop-turn 0.2 --speech-drop-dialogue 0.3 --pair-mix 0.3,0.3,0.4
