#!/bin/sh
# MiSTER-E with out-of-fold speech for stage 2 (issue 12): the shipped text encoder, a speech encoder trained
# without 6 of RAVDESS's 18 train actors, and stage 2 paired with (and reading) only those 6 actors' clips.
set -e
OUT=runs/mister-e-oof
rm -rf "$OUT" && mkdir -p "$OUT" && cp -r checkpoints/mister-e/text "$OUT/text"
COMMON="--corpus meld --data ../shared/data/meld --speech-corpus ravdess --speech-data ../shared/data/ravdess --stage2-speakers 6 --seed 0 --out $OUT"
python -m training train mister-e $COMMON --stage 1 --speech-epochs 40 --speech-embed-dim 128 --speech-shrink 8.0
python -m training train mister-e $COMMON --stage 2 --aligned-speech --preset small --epochs 12 --batch-size 8 \
  --lr 0.0005 --speech-drop-turn 0.2 --speech-drop-dialogue 0.3 --pair-mix 0.3,0.3,0.4
