"""`python -m training`: user errors are one `error: ...` line and exit status 2, never a traceback."""

import subprocess
import sys

from backend.settings import REPO_ROOT
from training.__main__ import cli


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["train", "face-encoder", "--data", str(tmp_path), "--epochs", "0", "--out", str(tmp_path / "o")]
    assert cli(args) == 2
    assert capsys.readouterr().err == "error: --epochs and --batch-size must be at least 1 and --lr positive\n"
    done = subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: --epochs")


def test_a_missing_model_is_a_user_error(tmp_path, capsys):
    args = ["evaluate", "mister-e", "--checkpoint", "no-such-version", "--corpus", "meld", "--data", str(tmp_path),
            "--out", str(tmp_path / "r.json")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-version" in err and "Traceback" not in err
