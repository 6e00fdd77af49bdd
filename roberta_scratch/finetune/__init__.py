"""Fine-tuning a pretrained encoder: tasks, their data, the trainer, prediction and scores.

readers.py   labelled text, tagged words and SQuAD files read and checked
tasks.py     classification, regression, token classification (NER) and question answering
prompt.py    prompt-based few-shot classification (the MLM head at a template's <mask>), --shots
registry.py  TASKS: every task by its --task name
trainer.py   FinetuneArgs and the fine-tuning loop on top of the core trainer
predict.py   a fine-tuned run's predictions on new rows
metrics.py   accuracy, F1, correlations, SQuAD exact match and F1
"""
