"""The model side of the server: what a model folder can do, and each route's three steps.

    engine = Engine.load("runs/sst2/best")
    features = engine.prepare("predict", rows)      # check and tokenize (any thread)
    outputs = engine.run("predict", features)       # one padded batch through the model
    results = engine.finish("predict", rows, features, outputs)

The batcher (batcher.py) runs `run` on batches it forms across requests; prepare and finish
stay per request. Prediction reuses the fine-tuning task's own steps (finetune/tasks.py), so a
served result is the result `roberta-scratch predict` gives for the same input.

Routes and the models that have them:
    predict     a fine-tuned folder (finetune.json, or a Hugging Face folder with a task head)
    embed       every model: the encoder's last hidden states, pooled over one input
    fill-mask   a folder with an MLM head
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checkpoints.formats import find_model_dir, read_checkpoint
from ..config import RobertaConfig
from ..finetune.predict import make_task, task_info
from ..finetune.readers import DataError
from ..finetune.registry import TASKS
from ..finetune.tasks import pad_rows
from ..model import RobertaForMaskedLM, RobertaModel, build_model
from ..tokenization.byte_level import load_tokenizer

POOLINGS = ("mean", "cls")


class InputError(ValueError):
    """A request's input the model cannot take; `limit` names the limit it broke, if any."""

    def __init__(self, message: str, limit: dict | None = None):
        super().__init__(message)
        self.limit = limit


class Unsupported(InputError):
    """A route this model has no head for."""


@dataclass
class Engine:
    """A loaded model folder: its tokenizer, its model and, when fine-tuned, its task."""

    path: str
    cfg: RobertaConfig
    tok: object
    model: torch.nn.Module
    task: object | None  # the fine-tuning Task, or None for an MLM or bare encoder folder
    device: str = "cpu"
    pooling: str = "mean"

    @classmethod
    def load(cls, path: str, device: str = "cpu", trust_code: bool = False, pooling: str = "mean") -> Engine:
        """Any folder the other commands take: fine-tuned, MLM, int8, pruned or Hugging Face."""
        if pooling not in POOLINGS:
            raise ValueError(f"--pooling {pooling!r}: choose one of {POOLINGS}")
        path, note = find_model_dir(path)
        if note:
            warnings.warn(note, stacklevel=2)
        cfg, sd = read_checkpoint(path, trust_code=trust_code, attention="sdpa")
        info = task_info(path, cfg, sd, required=False)
        if info is not None:
            task, model_class = make_task(path, cfg, info), TASKS[info["task"]].model_class
        else:
            task, model_class = None, RobertaForMaskedLM if "lm_head.bias" in sd else RobertaModel
        try:
            tok = load_tokenizer(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}: a served model needs its tokenizer in its folder") from None
        with warnings.catch_warnings():  # an MLM folder's pooler or NSP keys are not needed here
            warnings.simplefilter("ignore")
            model = build_model(model_class, cfg, sd).eval().to(device)
        return cls(path, cfg, tok, model, task, device, pooling)

    # ---- what this model serves --------------------------------------------------

    @property
    def encoder(self) -> RobertaModel:
        return self.model if isinstance(self.model, RobertaModel) else self.model.roberta

    @property
    def routes(self) -> list[str]:
        return (["predict"] if self.task else []) + ["embed"] + (["fill-mask"] if self.has_mlm else [])

    @property
    def has_mlm(self) -> bool:
        return isinstance(self.model, RobertaForMaskedLM)

    @property
    def max_length(self) -> int:
        """Tokens per input, special tokens included."""
        return self.task.args.max_length if self.task else self.cfg.max_tokens

    def info(self) -> dict:
        return {
            "model_id": os.path.basename(os.path.normpath(self.path)),
            "task": self.task.name if self.task else ("fill-mask" if self.has_mlm else "features"),
            "labels": getattr(self.task, "label_names", None),
            "max_input_length": self.max_length,
            "hidden_size": self.cfg.hidden_size,
            "layers": self.cfg.num_hidden_layers,
            "quantization": self.cfg.quantization,
            "pruned_heads": {str(k): v for k, v in (self.cfg.pruned_heads or {}).items()},
            "backend": "torch",
            "device": self.device,
            "pooling": self.pooling,
            "routes": self.routes,
        }

    def require(self, route: str) -> None:
        if route in self.routes:
            return
        why = {
            "predict": "it has no fine-tuned task head (fine-tune it with `roberta-scratch finetune`)",
            "fill-mask": "it has no masked-LM head (a fine-tuned model dropped it)",
        }[route]
        raise Unsupported(f"this model cannot serve /{route}: {why}; it serves {self.routes}")

    # ---- step 1: prepare (per request) ----------------------------------------------

    def prepare(self, route: str, rows: list, truncate: bool, **options) -> list[dict]:
        """The features of one request's inputs; InputError names a bad or too long input."""
        self.require(route)
        if route == "predict":
            try:
                rows[:] = [self.task.parse_input(r) if isinstance(r, str) else r for r in rows]
                features = self.task.prepare(rows, warn=False)
            except DataError as e:
                raise InputError(str(e)) from None
        elif route == "embed":
            features = [self._encode(r) for r in rows]
            for f in features:
                f["pooling"] = options.get("pooling") or self.pooling
        else:
            features = [self._masked(text, options["top_k"]) for text in rows]
        if not truncate:
            self._refuse_truncated(features)
        return features

    def _encode(self, text_or_ids) -> dict:
        """An embed input: a text, or token ids (the OpenAI route's int arrays) in <s> ... </s>."""
        if isinstance(text_or_ids, str):
            ids = self.tok.encode(text_or_ids)
        else:
            bad = [i for i in text_or_ids if not 0 <= i < self.cfg.vocab_size]
            if bad:
                raise InputError(f"token id {bad[0]} is out of range for this model's {self.cfg.vocab_size} tokens")
            ids = [self.tok.cls_token_id, *text_or_ids, self.tok.sep_token_id]
        n = self.max_length
        cut = ids if len(ids) <= n else ids[: n - 1] + [self.tok.sep_token_id]
        return {"input_ids": cut, "truncated": len(ids) > n, "length": len(ids)}

    def _masked(self, text: str, top_k: int) -> dict:
        if not 1 <= top_k <= self.cfg.vocab_size:
            raise InputError(f"top_k {top_k} must be between 1 and the vocabulary's {self.cfg.vocab_size}")
        f = self._encode(text)
        f["masks"] = [i for i, t in enumerate(f["input_ids"]) if t == self.tok.mask_token_id]
        if not f["masks"] and f["truncated"]:  # there is one, cut off: say so, not that it is missing
            raise InputError(
                f"every {self.tok.mask_token} in {text[:200]!r} lies past the {self.max_length} tokens this model "
                "takes: shorten the text around it",
                limit={"max_input_length": self.max_length},
            )
        if not f["masks"]:
            raise InputError(f"no {self.tok.mask_token} in {text[:200]!r}")
        f["top_k"] = top_k
        return f

    def _refuse_truncated(self, features: list[dict]) -> None:
        long = [i for i, f in enumerate(features) if f["truncated"]]
        if long:
            f = features[long[0]]
            size = f" ({f['length']} tokens)" if "length" in f else ""
            raise InputError(
                f"input {long[0]} is longer than the {self.max_length} tokens this model takes{size}: "
                'shorten it, or send "truncate": true to use its beginning',
                limit={"max_input_length": self.max_length},
            )

    # ---- step 2: run (per batch, on the model's thread) --------------------------------

    @torch.inference_mode()
    def run(self, route: str, features: list[dict]) -> list:
        """One batch: the output of each feature, float32 on the CPU."""
        lengths = [len(f["input_ids"]) for f in features]
        if route == "predict":  # the task's own batch, as offline predict builds it
            ids, mask = self.task.model_inputs(features, self.device)
            out = self.model(ids, attention_mask=mask, **self.task.model_kwargs(features, self.device))
            outs = self.task.split_outputs(out, lengths)
        else:  # the mask from the lengths: a <pad> id sent to /v1/embeddings is a token like any other
            ids = pad_rows([f["input_ids"] for f in features], self.tok.pad_token_id).to(self.device)
            mask = (
                torch.arange(ids.shape[1], device=self.device)[None, :] < torch.tensor(lengths)[:, None].to(self.device)
            ).long()
            h = self.encoder(ids, attention_mask=mask).last_hidden_state
            if route == "embed":  # cls: the <s> token's state; mean: over the input's tokens, specials too
                outs = [
                    (h[i, 0] if f["pooling"] == "cls" else h[i, :n].mean(0)).float().cpu()
                    for i, (f, n) in enumerate(zip(features, lengths, strict=True))
                ]
            else:
                outs = [self._top_k(h[i, f["masks"]], f["top_k"]) for i, f in enumerate(features)]
        check_finite(outs)
        return outs

    def _top_k(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = self.model.predict(h).float().softmax(-1).topk(k)
        return top.values.cpu(), top.indices.cpu()

    # ---- step 3: finish (per request) -----------------------------------------------

    def finish(self, route: str, rows: list, features: list[dict], outputs: list, **options) -> list:
        if route == "predict":
            return self.task.finish(rows, features, outputs)
        if route == "embed":
            vectors = torch.stack(outputs)
            return (F.normalize(vectors, dim=-1) if options.get("normalize", True) else vectors).tolist()
        return [
            {
                "text": text,
                "masks": [
                    [
                        {"token": self.tok.decode([i]), "token_id": i, "score": p}
                        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
                    ]
                    for values, indices in zip(*out, strict=True)
                ],
            }
            for text, out in zip(rows, outputs, strict=True)
        ]

    def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict]]:
        """TEI's /tokenize: each token's id, text, whether it is special, and its character span."""
        enc = self.tok(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        special = set(self.tok.special_tokens.values())
        return [
            [
                {"id": i, "text": self.tok.id_to_token(i), "special": i in special}
                | ({"start": None, "stop": None} if i in special else {"start": a, "stop": b})
                for i, (a, b) in zip(ids, offsets, strict=True)
            ]
            for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]


def check_finite(outputs: list) -> None:
    """A batch's outputs hold no NaN or inf: a bad number never reaches a client as a result."""
    for out in outputs:
        for t in out if isinstance(out, tuple) else (out,):
            if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
                raise FloatingPointError("the model produced NaN or inf for this batch")
