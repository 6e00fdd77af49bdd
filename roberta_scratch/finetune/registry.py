"""Every fine-tuning task by its --task name. Apart from tasks.py so that a task in a module of
its own (prompt.py builds on tasks.py) is named here with the others, without an import cycle."""

from __future__ import annotations

from .prompt import PromptClassification
from .tasks import QuestionAnswering, SequenceClassification, TokenClassification

TASKS = {t.name: t for t in (SequenceClassification, TokenClassification, QuestionAnswering, PromptClassification)}
