"""roberta-scratch: RoBERTa reimplemented from scratch in PyTorch."""

from .config import RobertaConfig
from .data.masking import DynamicMaskingCollator
from .model import (
    RobertaForMaskedLM,
    RobertaForPreTraining,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from .tokenization.byte_level import ByteLevelBPETokenizer, Tokenizer, load_tokenizer
from .tokenization.spm import SentencePieceTokenizer

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
