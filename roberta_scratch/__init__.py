"""roberta-scratch: RoBERTa reimplemented from scratch in PyTorch.

The names below load on first use (PEP 562): `import roberta_scratch` alone, and commands that
need no model (`prepare`, the tokenizer's), do not pay the ~1.2 s it takes to import torch.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "RobertaConfig": ".config",
    "DynamicMaskingCollator": ".data.masking",
    "RobertaModel": ".model",
    "RobertaForMaskedLM": ".model",
    "RobertaForSequenceClassification": ".model",
    "RobertaForTokenClassification": ".model",
    "RobertaForQuestionAnswering": ".model",
    "RobertaForPreTraining": ".model",
    "ByteLevelBPETokenizer": ".tokenization.byte_level",
    "Tokenizer": ".tokenization.byte_level",
    "load_tokenizer": ".tokenization.byte_level",
    "SentencePieceTokenizer": ".tokenization.spm",
}

__all__ = [
    "RobertaConfig",
    "RobertaModel",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaForQuestionAnswering",
    "RobertaForPreTraining",
    "DynamicMaskingCollator",
    "ByteLevelBPETokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_tokenizer",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
