"""Every-turn FARCER labelling: cached prefix + incremental KV cache vs re-encoding every prompt.

    python -m benchmarks.farcer_incremental --turns 20 --shots 7 [--model PATH] [--repeats 3] --out FILE

Without --model it uses the shipped offline FARCER (its core is the packaged SmolLM2-135M-Instruct) when it
loads, else a random Llama of a realistic small size; dialogues, examples and face vectors are synthetic.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from backend.dialogue import Turn
from backend.farcer_processor import Example, FarcerProcessor, sample_shots
from backend.labels import MELD7
from models.farcer import TURNS_PER_PASS, Farcer, FarcerConfig
from training.farcer_core import SPECIAL_TOKENS, chat_tokenizer

T = TypeVar("T")
SPEAKERS = ("Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe")
WORDS = (
    "oh my god you know what I mean this is the best day ever no way are kidding me we were on a break "
    "could be any more wrong how you doin it is not fair why do all your coffee mugs have numbers she "
    "can keep track that way if one of them missing where number I do not want it see look at"
).split()
SMALL_LLAMA = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
}


def words_of(texts: Iterable[str]) -> list[str]:
    """The words a whitespace/punctuation pre-tokenizer makes of the texts, first seen first."""
    return list(dict.fromkeys(w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text)))


def word_tokenizer(words: Iterable[str], vocab_size: int | None = None):
    """A word-level fast tokenizer with a chat template and an end-of-turn token (no hub needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words_of([" ".join(words), *MELD7]):
        vocab.setdefault(word, len(vocab))
    for filler in range(len(vocab), vocab_size or 0):
        vocab[f"w{filler}"] = filler
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return chat_tokenizer(backend)


def built_on(make: Callable[[], T], device: str = "cpu", dtype: torch.dtype = torch.float32) -> T:
    """`make()` with its tensors created directly on `device` in `dtype` (an 8B model never passes
    through host memory in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make()
    finally:
        torch.set_default_dtype(previous)


def random_llama(
    vocab_size: int, context: int = 2048, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
    **sizes: float,
):
    """A randomly initialised Llama in eval mode, built on `device` in `dtype`; sizes are LlamaConfig fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=context, tie_word_embeddings=False, **sizes
    )
    return built_on(lambda: LlamaForCausalLM(config), device, dtype).eval()


def random_farcer(
    config: FarcerConfig, vocab_size: int | None = None, context: int = 2048, seed: int = 0,
    labels: Sequence[str] = MELD7, device: str = "cpu", dtype: torch.dtype = torch.float32, **sizes: float,
) -> tuple[Farcer, FarcerProcessor]:
    """A Farcer around a random Llama (its core on `device` in `dtype`, the projector float32), and its
    processor with a word tokenizer covering the synthetic dialogues."""
    tokenizer = word_tokenizer([*WORDS, *SPEAKERS, "DIALOGUE", "EMOTION", "LABEL"], vocab_size)
    processor = FarcerProcessor(tokenizer, labels)
    lm = random_llama(len(processor.tokenizer), context, seed, device, dtype, **sizes)
    torch.manual_seed(seed + 1)
    return Farcer(lm, config, processor.label_ids, processor.end_ids).eval(), processor


def synthetic_dialogue(
    n_turns: int, image_dim: int, seed: int = 0, labels: Sequence[str] = MELD7, words: int = 12
) -> tuple[list[Turn], list[torch.Tensor]]:
    """Turns of random words with random gold labels, and one random face vector per turn."""
    rng = random.Random(seed)
    turns = [
        Turn(
            rng.choice(SPEAKERS),
            None,
            None,
            " ".join(rng.choices(WORDS, k=rng.randint(words // 2, words))),
            label=rng.choice(labels),
        )
        for _ in range(n_turns)
    ]
    gen = torch.Generator().manual_seed(seed)
    return turns, list(torch.randn(n_turns, image_dim, generator=gen))


def synthetic_pool(n: int, image_dim: int, seed: int = 0, labels: Sequence[str] = MELD7) -> list[Example]:
    """n few-shot examples of 2-4 turns, half of them with face vectors."""
    pool = []
    for i in range(n):
        turns, faces = synthetic_dialogue(2 + i % 3, image_dim, seed * 1000 + i, labels)
        pool.append(Example(tuple(turns), tuple(faces) if i % 2 == 0 else None))
    return pool


def benchmark_model(path: str | None) -> tuple[Farcer, FarcerProcessor, str]:
    from backend.errors import ModelUnavailableError
    from backend.farcer_predictor import MODEL, load_core, load_farcer
    from backend.model_store import open_model_store
    from backend.settings import get_settings

    if path:
        lm, tokenizer = load_core(path, "cpu")
        processor = FarcerProcessor(tokenizer, MELD7)
        farcer = Farcer(lm, FarcerConfig(max_context=2048), processor.label_ids, processor.end_ids)
        return farcer.eval(), processor, path
    store = open_model_store(get_settings())
    try:  # the shipped FARCER (its core is a component: SmolLM2 from its package)
        shipped = store.find(MODEL, MODEL)
        farcer, processor = load_farcer(shipped, store, "cpu")
    except ModelUnavailableError:
        vocab = 8000
        farcer, processor = random_farcer(FarcerConfig(max_context=2048), vocab_size=vocab, **SMALL_LLAMA)
        params = sum(p.numel() for p in farcer.lm.parameters()) / 1e6
        name = f"random Llama {params:.1f}M params (hidden 512, 6 layers, vocab {vocab}, context 2048)"
        return farcer, processor, name
    return farcer, processor, f"{shipped.path} (version {shipped.version}, core {shipped.versions().get('core')})"


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The median wall time of `repeats` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(
    farcer: Farcer, processor: FarcerProcessor, turns: int, shots: int, seed: int = 0, repeats: int = 3
) -> dict:
    """Label one synthetic dialogue three ways (median of `repeats` runs each). `incremental_s` counts
    encoding the prefix for this dialogue alone (the app encodes it once per process);
    `turn_by_turn_s` is one turn per pass, as labelling with predicted past labels must run, on an
    encoded prefix."""
    dim = farcer.config.image_dim
    dialogue, faces = synthetic_dialogue(turns, dim, seed + 1)
    examples = sample_shots(synthetic_pool(20, dim, seed), shots, seed)
    proc = processor
    proc.label_dialogue(farcer, dialogue[:2], faces[:2], proc.encode_prefix(farcer, examples))  # warm-up
    prefix_s, prefix = timed(lambda: proc.encode_prefix(farcer, examples), repeats)
    incremental_s, incremental = timed(
        lambda: proc.label_dialogue(farcer, dialogue, faces, proc.encode_prefix(farcer, examples)), repeats
    )
    turn_by_turn_s, turn_by_turn = timed(
        lambda: proc.label_dialogue(farcer, dialogue, faces, prefix, turns_per_pass=1), repeats
    )
    naive_s, naive = timed(lambda: proc.label_dialogue_naive(farcer, dialogue, faces, prefix), repeats)
    return {
        "naive_s": round(naive_s, 3),
        "incremental_s": round(incremental_s, 3),
        "speedup": round(naive_s / incremental_s, 2),
        "same_labels": naive.labels == incremental.labels == turn_by_turn.labels,
        "max_abs_logprob_diff": float(
            max((naive.logprobs - run.logprobs).abs().max() for run in (incremental, turn_by_turn))
        ),
        "prefix_s": round(prefix_s, 3),
        "turn_by_turn_s": round(turn_by_turn_s, 3),
        "speedup_turn_by_turn": round(naive_s / (prefix_s + turn_by_turn_s), 2),
        "turns": turns,
        "turns_per_pass": TURNS_PER_PASS,
        "shots": shots,
        "repeats": repeats,
        "prefix_tokens": prefix.length,
        "warning": incremental.warning,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--shots", type=int, default=7, choices=(0, 3, 7))
    parser.add_argument("--model", help="a core LM instead of the shipped FARCER: a packaged one (smollm2) or a "
                        "Hugging Face causal LM directory (with its tokenizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each way; the median is reported"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps shared boxes fair)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    farcer, processor, name = benchmark_model(args.model)
    with torch.no_grad():
        result = {
            **run(farcer, processor, args.turns, args.shots, args.seed, max(1, args.repeats)),
            "threads": args.threads,
            "model": name,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
