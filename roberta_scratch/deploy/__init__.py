"""Shipping a trained model small and fast: int8 quantization, structured pruning, ONNX export.

    roberta-scratch quantize --model RUN/model --out RUN/int8
    roberta-scratch prune --model RUN/model --out RUN/pruned --heads-by-importance 0.33 --data train.jsonl
    roberta-scratch export --model RUN/model --out RUN/model/model.onnx [--int8]   # predict --backend onnx

Each writes a folder (or file) that the other commands take as --model, through a temporary
path renamed into place, so a failed run leaves nothing half-written. See docs/deploy.md.
"""
