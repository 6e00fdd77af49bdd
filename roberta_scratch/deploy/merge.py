"""`roberta-scratch lora merge`: fold a LoRA adapter into its base model's weights, once.

    roberta-scratch lora merge --adapter RUN/model --out merged/      # [--base DIR] if the base moved

The result is an ordinary fine-tuned folder (config.json, model.safetensors, the tokenizer and
finetune.json): quantize, export, convert and anything else that reads a model take it, and it
runs at the speed of the plain model, with no low-rank matmuls beside each projection. The
command checks that the merged model's outputs equal base + adapter's, unmerged, on a few
sentences, and says the largest difference.
"""

from __future__ import annotations

import os
import warnings

from ..checkpoints.adapter import is_adapter
from ..checkpoints.formats import find_model_dir, read_adapter, save_ours
from ..checkpoints.keymaps import hf_architecture
from ..fileio import new_directory
from ..lora import load_unmerged
from ..model import MODEL_CLASSES, build_model
from ..tokenization.byte_level import load_tokenizer
from .quantize import DEFAULT_TEXTS, _carry_files, compare_outputs

MERGE_TOLERANCE = 1e-4  # fp32: the merged weight rounds once where base + adapter rounds twice


def merge_adapter(adapter: str, out: str, base: str | None = None, trust_code: bool = False) -> str:
    """Write `out`, the adapter's base with the adapter merged in; returns a summary line."""
    src, note = find_model_dir(adapter)
    if note:
        warnings.warn(note, stacklevel=2)
    if not is_adapter(src):
        raise ValueError(f"{src} is not a LoRA adapter (no adapter_config.json): it is a model already")
    if os.path.lexists(out):
        raise FileExistsError(f"{out} already exists: name a new folder (nothing was written)")
    cfg, sd = read_adapter(src, trust_code=trust_code, base=base)
    cls = MODEL_CLASSES[hf_architecture(sd)]
    merged = build_model(cls, cfg, sd).eval()
    unmerged = load_unmerged(src, base=base, trust_code=trust_code)
    drift = compare_outputs(merged, unmerged, load_tokenizer(src), DEFAULT_TEXTS)
    if not drift <= MERGE_TOLERANCE:
        raise ValueError(
            f"merging changed the outputs by {drift:.3g} (more than {MERGE_TOLERANCE:g}): nothing was written"
        )
    with new_directory(out) as tmp:
        save_ours(cfg, merged.state_dict(), tmp, cls.__name__)
        _carry_files(src, tmp)
    return (
        f"wrote {out}: {cls.__name__}, the adapter {src} merged into its base; on {len(DEFAULT_TEXTS)} "
        f"built-in sentences the largest output change from base + adapter is {drift:.3g}"
    )
