"""Data-parallel training with accelerate: one place that builds the run's `Accelerator`, and the
helpers the training loops share.

    python -m training train mister-e ...                                # one process, as always
    accelerate launch --multi_gpu --num_processes 4 -m training train mister-e ...   # 4 GPUs
    accelerate launch --config_file fsdp.yaml -m training train farcer ...  # DeepSpeed / FSDP: accelerate's config

Without CUDA, `--multi_gpu` starts CPU processes joined by gloo (accelerate's `--cpu` alone starts one).

Every process draws the same seeded batch order and takes a contiguous share of each GLOBAL batch
(`local_batch`, `shard_bounds`), so a step sees the same examples whatever the process count. MiSTER-E
stage 1 and stage 2 take their loss on the outputs gathered from all processes (`gather_with_grad`): the
loss a single process computes on the whole batch, and DDP's gradient average is then the
single-process gradient. FARCER's loss is a weighted mean inside the model, so each process weighs its
label loss by its share of the batch's label weight (exact for heads; a core's LM-loss term is weighed
the same way, approximately). Stage 1 and FARCER validate a share of the items in each process and
gather the predictions (`map_shards`); stage 2 (a small model) validates in every process. So every
process selects the same best epoch; a checkpoint is written for real only by the main process
(training/outputs.py gives the others a throwaway folder).

Under several processes a run matches the single-process run to float rounding when the model has no
dropout; with dropout each process draws its own masks (as in any data-parallel run).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, gather_object

from backend.processes import process_state

T = TypeVar("T")
R = TypeVar("R")


def build_accelerator(
    *, bf16: bool = False, gradient_accumulation_steps: int = 1, cpu: bool | None = None
) -> Accelerator:
    """The run's Accelerator: bf16 mixed precision only when the run asks for it and CUDA is there,
    the CPU when there is no GPU (or `cpu`), `gradient_accumulation_steps` batches per optimiser step."""
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    # accelerate keeps one process-wide state that refuses a second precision; a command may train a
    # bf16 stage and then an fp32 one (MiSTER-E stage 1 text, then stage 2). The process group stays.
    AcceleratorState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if bf16 and not cpu and torch.cuda.is_available() else "no",
        gradient_accumulation_steps=gradient_accumulation_steps,
        # A batch may leave parts of a model unused (an expert whose modality no turn has, a projector
        # with no faces in the batch); DDP must then not wait for their gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def is_main_process() -> bool:
    """True in a single-process run and in the main process of a launched one."""
    return process_state().is_main_process


def distributed(accelerator: Accelerator | PartialState) -> bool:
    return accelerator.num_processes > 1


def prepare(
    accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (DDP-wrapped under several processes, on the process's device) and its optimizer."""
    return accelerator.prepare(model, optimizer)


def shard_bounds(n: int, accelerator: Accelerator | PartialState) -> tuple[int, int]:
    """[start, stop) of this process's contiguous share of `n` items; shares differ by at most one
    item, earlier processes take the larger ones, and in rank order they cover the items in order."""
    size, rank = accelerator.num_processes, accelerator.process_index
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def local_batch(global_batch: Sequence[T], accelerator: Accelerator, filler: Callable[[T], T]) -> tuple[list[T], int]:
    """This process's share of a global batch, padded with `filler(global_batch[0])` to the largest
    share (collectives need equal shapes in every process; a filler must add nothing to the loss),
    and how many leading items are real."""
    start, stop = shard_bounds(len(global_batch), accelerator)
    share = list(global_batch[start:stop])
    width = -(-len(global_batch) // accelerator.num_processes)
    return share + [filler(global_batch[0])] * (width - len(share)), len(share)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward gives each process the gradient of its own rows summed
    over all processes' losses (gloo has no reduce-scatter, so an all_reduce and a slice)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """Every process's `tensor` (equal shapes) concatenated in rank order along dim 0.

    A loss computed on gathered outputs is the whole global batch's loss in every process; backward
    hands each process W times its rows' gradient, and DDP's mean over the W processes turns that
    into the single-process gradient. Tensors without grad (masks, labels) are gathered plainly."""
    if not distributed(accelerator):
        return tensor
    if not tensor.requires_grad:
        return accelerator.gather(tensor) if tensor.dtype != torch.bool else accelerator.gather(tensor.byte()).bool()
    return _GatherWithGrad.apply(tensor)


def map_shards(
    fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], accelerator: Accelerator | PartialState
) -> list[R]:
    """`fn(items)` computed as each process's contiguous share and gathered back in order (every
    process gets the whole list); one process calls `fn` on all items."""
    if not distributed(accelerator):
        return fn(items)
    start, stop = shard_bounds(len(items), accelerator)
    return gather_object(fn(items[start:stop]) if stop > start else [])


def enable_gradient_checkpointing(module: torch.nn.Module) -> int:
    """Gradient checkpointing in every transformers model inside `module` (recomputes activations in
    backward: the memory of a 7-8B backbone's activations for about a third more compute); the number
    of models switched. transformers also gives the inputs requires_grad, so checkpointed blocks of a
    frozen backbone under LoRA still pass gradients to the adapters."""
    switched = 0
    for sub in module.modules():
        if not getattr(sub, "supports_gradient_checkpointing", False) or getattr(sub, "is_activation_checkpointing", False):
            continue  # not a transformers model, or switched on through the model that holds it
        sub.activation_checkpointing_enable({"use_reentrant": False})
        switched += 1
    return switched
