"""roberta-scratch: RoBERTa reimplemented from scratch in PyTorch."""

from .config import RobertaConfig
from .masking import DynamicMaskingCollator
from .model import (
    RobertaForMaskedLM,
    RobertaForPreTraining,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from .spm_tokenizer import SentencePieceTokenizer
from .tokenizer import ByteLevelBPETokenizer, Tokenizer, load_tokenizer

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
