"""The paper's ablation study: arms pretrained and fine-tuned alike, compared with their noise.

runner.py   presets, arms and the run (resumable; reruns keep what is done)
tasks.py    the downstream task built for the study
report.py   the table, the figures and the verdicts
"""
