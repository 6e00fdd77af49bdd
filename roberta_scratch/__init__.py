"""roberta-scratch: RoBERTa reimplemented from scratch in PyTorch."""
from .config import RobertaConfig
from .masking import DynamicMaskingCollator
from .model import (
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

__all__ = [
    "RobertaConfig",
    "RobertaModel",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaForQuestionAnswering",
    "DynamicMaskingCollator",
]
