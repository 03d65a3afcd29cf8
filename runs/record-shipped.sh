set -e
M="--corpus meld --data ../shared/data/meld --split test --drop-modality 0.0 --seed 0"
R="--speech-corpus ravdess --speech-data ../shared/data/ravdess"
python -m training evaluate mister-e $M --out runs/mister-e-meld-test.json --record
python -m training evaluate mister-e --corpus ravdess --data ../shared/data/ravdess --split test --drop-modality 0.0 --seed 0 --out runs/mister-e-ravdess-test.json --record
python -m training evaluate mister-e --corpus ravdess --data ../shared/data/ravdess --split test --modalities text,speech --drop-modality 0.0 --seed 0 --out runs/mister-e-ravdess-test-aligned.json --record
python -m training evaluate mister-e $M --paired-speech neutral $R --out runs/mister-e-meld-test-neutral.json --record
python -m training evaluate mister-e $M --paired-speech random $R --out runs/mister-e-meld-test-random.json --record
