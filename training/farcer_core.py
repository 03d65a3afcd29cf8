"""The offline FARCER core LM: a small Llama with a byte-level BPE tokenizer trained here.

No pretrained causal LM is reachable offline, so `python -m training train farcer --core new` builds
one from the training transcripts (the role of the paper's text-only LLM row) and saves it as a
Hugging Face folder (a "farcer-core" checkpoint) that `backend.farcer_predictor.load_core` loads like any
hub model.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from backend.farcer_processor import instructions
from backend.labels import LABEL_SETS
from models.farcer import PAST_LABELS

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|eot|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class CoreConfig:
    vocab_size: int = 6000
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    context: int = 2048

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_texts(repeat: int = 100) -> list[str]:
    """The fixed prompt wording for every label set, repeated so that it tokenizes compactly; answers
    start a line, so each label also appears bare and becomes one token."""
    texts = [instructions(labels, past) for labels in LABEL_SETS.values() for past in PAST_LABELS]
    texts += [label for labels in LABEL_SETS.values() for label in labels]
    return (texts + ["DIALOGUE:\nFew-shot examples:\nEMOTION LABEL:'s current emotion:"]) * repeat


def chat_tokenizer(backend):
    """A `tokenizers` tokenizer wrapped for transformers, with FARCER's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|eot|>",
        chat_template=CHAT_TEMPLATE,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (never an unknown token) with chat special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([*texts, *prompt_texts()], trainer)
    return chat_tokenizer(backend)


def new_core(tokenizer, config: CoreConfig, seed: int = 0):
    """A randomly initialised Llama sized by `config` for `tokenizer` (fp32, train mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(llama)


def save_core(lm, tokenizer, out: Path) -> None:
    """The LM in fp16 safetensors plus its tokenizer: a folder `from_pretrained` can load."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half() if v.is_floating_point() else v for k, v in lm.state_dict().items()}
    lm.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)
