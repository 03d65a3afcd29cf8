"""This process's place in an `accelerate launch` run, for every command that can run as several
processes (batch analysis here, training in training/distributed.py)."""
from __future__ import annotations

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """This process's place in the run (one process of one when not launched). Under `accelerate launch`
    the first call joins the process group and binds the process's GPU, so that a model loaded on
    "cuda" lands on it: call it before loading models. Without CUDA it must say cpu, or accelerate
    leaves launched CPU processes apart (then they are joined by gloo)."""
    return PartialState(cpu=not torch.cuda.is_available())


def leave_process_group() -> None:
    """Leave the run's process group once every process is done. A launched process that exits with
    the group's communication threads still alive can abort at exit ("terminate called without an
    active exception", SIGABRT), and the launcher then fails the whole run."""
    state = process_state()
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()
