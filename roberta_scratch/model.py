"""RoBERTa, written out by hand. Read it top to bottom like the paper:

    embeddings:  LN(word + position + token_type) -> dropout
    N layers:    h = LN(x + drop(attn(x)));  x = LN(h + drop(fc2(gelu(fc1(h)))))   (post-LN)
    heads:       masked LM, sequence classification, token classification, QA, and BERT's
                 pretraining pair (masked LM + next-sentence prediction, for the ablations)

Numbers match the reference implementations (fairseq, Hugging Face) to fp32
rounding; the module structure is our own, and checkpoints/keymaps.py maps their state
dicts onto it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import roberta_kernels

from .checkpoints.formats import read_checkpoint, save_ours
from .checkpoints.keymaps import ENCODER_PREFIX, HEAD_PREFIXES, normalise_prefix
from .config import IGNORE_INDEX, RobertaConfig
from .int8 import swap_linears, unpack_embeddings

ACT2FN = {
    "gelu": F.gelu,  # exact erf form, as in the original
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class Output:
    """What every model returns; fields that a model does not produce stay None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None  # (B, 2): next-sentence prediction, RobertaForPreTraining only
    mlm_loss: torch.Tensor | None = None  # RobertaForPreTraining: the two terms of its loss
    nsp_loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None  # question answering only
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None  # (B, T, H)
    hidden_states: tuple | None = None  # embeddings output, then every layer's: N + 1 of (B, T, H)
    attentions: tuple | None = None  # every layer's attention probabilities: N of (B, nh, T, T)


# --------------------------------------------------------------------------- parts


class RobertaEmbeddings(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.padding_idx = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(
            cfg.max_position_embeddings, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = AddNorm(cfg)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # subtle: positions count real tokens only and start at padding_idx + 1, so with
        # padding_idx=1 the first token sits at position 2 and every pad at position 1,
        # whose row is zero. The reference derives them from the ids, not the attention mask.
        real = input_ids.ne(self.padding_idx).int()  # (B, T)
        position_ids = torch.cumsum(real, dim=1, dtype=torch.int32) * real + self.padding_idx
        if token_type_ids is None:
            # Every token has token type 0 (RoBERTa has no segments): add that one row.
            x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        else:  # BERT's segments A (0) and B (1), for the pair formats of the ablations
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids.long())  # (B, T, H)
        return self.norm(x)


class AddNorm(nn.LayerNorm):
    """LN(dropout(x) + residual), or LN(x) -> dropout without a residual (the embeddings).

    config.layer_norm names the implementation of the residual step (kernels' registry);
    by default torch's, or our fused kernel (roberta_kernels.layer_norm) with attention="triton".
    """

    def __init__(self, cfg: RobertaConfig, dropout: float | None = None):
        super().__init__(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = cfg.hidden_dropout_prob if dropout is None else dropout
        name = cfg.layer_norm or ("triton" if cfg.attention == "triton" else "torch")
        self.impl = None if name == "torch" else roberta_kernels.get_implementation("layer_norm", name)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if residual is None:  # embeddings: the dropout comes after the norm
            return F.dropout(super().forward(x), p, self.training)
        if self.impl is not None:
            return self.impl.fn(x, self.weight, self.bias, self.eps, residual=residual, dropout_p=p)
        return super().forward(residual + F.dropout(x, p, self.training))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key-padding mask; no causal mask (an encoder).

    Every implementation computes the same thing; config.attention picks one by name:
      eager:  the math written out below. It is the reference.
      sdpa:   torch's F.scaled_dot_product_attention (flash / memory-efficient kernels).
      triton: roberta_kernels.attention, our fused kernel (falls back to torch off-GPU).
      flex, a name you registered, or MODULE:FUNCTION: from roberta_kernels' registry, called as
              fn(q, k, v, key_padding_mask=..., dropout_p=...) (see kernels/roberta_kernels/registry.py).
    """

    def __init__(self, cfg: RobertaConfig, index: int):
        super().__init__()
        # A pruned layer (cfg.pruned_heads, roberta-scratch prune) keeps fewer heads of the same
        # size, so the heads together are n_head * head_dim wide, which may be less than C.
        self.n_head, self.head_dim = cfg.heads_in_layer(index), cfg.head_dim
        inner = self.n_head * self.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * inner)  # query, key, value in one matmul
        self.proj = nn.Linear(inner, cfg.hidden_size)
        self.dropout = cfg.attention_probs_dropout_prob
        self.backend = cfg.attention
        self.impl = None if self.backend == "eager" else roberta_kernels.get_implementation("attention", self.backend)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None, need_weights: bool = False):
        """x: (B, T, C); pad_mask: (B, T) bool, True for real tokens, or None for no padding.
        Returns (output (B, T, C), attention probabilities (B, nh, T, T) if need_weights else None)."""
        if need_weights and self.backend != "eager":
            raise ValueError(
                f"attention probabilities are only available with attention='eager'; the "
                f"{self.backend!r} backend never materialises them"
            )
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_dim
        q, k, v = self.qkv(x).split(nh * hs, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0

        if self.backend == "eager":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            if pad_mask is not None:
                att = att.masked_fill(~pad_mask[:, None, None, :], float("-inf"))
            att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
            att = F.dropout(att, p, self.training)
            y = att @ v  # (B, nh, T, hs)
        else:  # sdpa, triton, flex or yours: the registry's contract
            why = self.impl.unsupported_shape(T, pad_mask is not None)  # limits the kernel declared
            if why:
                raise ValueError(f"attention {self.backend!r} cannot run this batch (T={T}): {why}")
            y = self.impl.fn(q, k, v, key_padding_mask=pad_mask, dropout_p=p)  # (B, nh, T, hs)

        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # re-assemble the heads side by side
        return self.proj(y), (att if need_weights else None)


class FeedForward(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACT2FN[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    """One post-LN Transformer layer, as in BERT and RoBERTa; `index` is its place in the stack
    (a pruned config gives each layer its own head count)."""

    def __init__(self, cfg: RobertaConfig, index: int):
        super().__init__()
        self.attn = SelfAttention(cfg, index)
        self.attn_norm = AddNorm(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = AddNorm(cfg)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None, need_weights: bool = False):
        h, att = self.attn(x, pad_mask, need_weights)
        x = self.attn_norm(h, residual=x)
        return self.ffn_norm(self.ffn(x), residual=x), att


# --------------------------------------------------------------------------- the encoder


class PreTrained(nn.Module):
    """Initialisation, input checks and save/load shared by every model class."""

    config: RobertaConfig

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, param in self.named_parameters():
            if name == "lm_head.bias":
                nn.init.zeros_(param)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str) -> None:
        """Write `config.json` and `model.safetensors` into the directory `path`."""
        save_ours(self.config, self.state_dict(), path, model_class=type(self).__name__)

    @classmethod
    def from_pretrained(
        cls, path: str, reinit_mismatched_heads: bool = False, trust_code: bool = False, **config_overrides
    ):
        """Load this project's directory or a Hugging Face roberta directory.

        Keyword arguments override config fields, e.g. attention="eager" or num_labels=3.
        A head the checkpoint lacks is initialised fresh, with a warning that names it; so is
        one whose shape differs when reinit_mismatched_heads is set (else that is an error).
        A config.json that names a kernel as MODULE:FUNCTION is refused unless trust_code=True:
        building the model would import that module (RobertaConfig.load).
        """
        cfg, sd = read_checkpoint(path, trust_code=trust_code, **config_overrides)
        return build_model(cls, cfg, sd, reinit_mismatched_heads)


ID_DTYPES = (torch.int64, torch.int32)  # what an embedding lookup takes; bool and uint8 would be masks


def _check_shapes(cfg: RobertaConfig, input_ids, attention_mask, token_type_ids) -> None:
    """check_inputs' part that needs no device sync: types, shapes and the length."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in ID_DTYPES:
        raise ValueError(
            f"input_ids must be an int64 or int32 tensor of shape (batch, seq_len), got "
            f"{getattr(input_ids, 'dtype', type(input_ids))} {tuple(getattr(input_ids, 'shape', ()))}"
        )
    B, T = input_ids.shape
    if T > cfg.max_tokens:
        raise ValueError(
            f"sequence length {T} is longer than the {cfg.max_tokens} positions this model has "
            f"(max_position_embeddings {cfg.max_position_embeddings} - padding_idx "
            f"{cfg.pad_token_id} - 1); truncate the input"
        )
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty, shape {tuple(input_ids.shape)}")
    if token_type_ids is not None:
        if (
            not isinstance(token_type_ids, torch.Tensor)
            or tuple(token_type_ids.shape) != (B, T)
            or token_type_ids.dtype not in ID_DTYPES
        ):
            raise ValueError(
                f"token_type_ids must be an int64 or int32 tensor of shape (batch, seq_len) = {(B, T)} "
                f"like input_ids, got {getattr(token_type_ids, 'dtype', type(token_type_ids))} "
                f"{tuple(getattr(token_type_ids, 'shape', ()))}"
            )
    if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, seq_len) "
            f"= {(B, T)} like input_ids"
        )


def check_inputs(
    cfg: RobertaConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Validate on the host, so bad input is a ValueError on every device (never a CUDA assert).

    Returns the key-padding mask as (B, T) bool, or None when nothing is padded.
    """
    _check_shapes(cfg, input_ids, attention_mask, token_type_ids)
    B, T = input_ids.shape
    stats = [input_ids.min(), input_ids.max()]
    if attention_mask is not None:
        attention_mask = attention_mask.to(device=input_ids.device)
        if attention_mask.dtype != torch.bool:  # 1 and 0 only: 2, -1 or NaN is a bug upstream, not "real"
            odd = (attention_mask != 0) & (attention_mask != 1)
            stats.append(odd.any().to(input_ids.dtype))
            attention_mask = attention_mask == 1
        real = attention_mask.sum(dim=1)
        stats += [real.min(), real.max()]
    if token_type_ids is not None:
        stats += [
            token_type_ids.min().to(device=input_ids.device, dtype=input_ids.dtype),
            token_type_ids.max().to(device=input_ids.device, dtype=input_ids.dtype),
        ]
    stats = torch.stack(stats).tolist()  # one device sync for every check
    if token_type_ids is not None:
        low, high = stats.pop(-2), stats.pop(-1)
        if low < 0 or high >= cfg.type_vocab_size:
            raise ValueError(
                f"token type id {low if low < 0 else high} is out of range for type_vocab_size "
                f"{cfg.type_vocab_size}"
                + (
                    " (RoBERTa's configs have one token type; the pair formats need a config with type_vocab_size=2)"
                    if cfg.type_vocab_size == 1
                    else ""
                )
            )
    if attention_mask is not None and len(stats) == 5:
        if stats.pop(2):
            raise ValueError(
                "attention_mask must hold only 1 (a real token) and 0 (padding); it holds other "
                "values (2, -1 or NaN, say)"
            )
    if stats[0] < 0 or stats[1] >= cfg.vocab_size:
        bad = stats[0] if stats[0] < 0 else stats[1]
        raise ValueError(f"token id {bad} is out of range for vocab_size {cfg.vocab_size}")
    if attention_mask is None:
        return None
    if stats[2] == 0:
        raise ValueError("attention_mask has a row with no real tokens; every sequence needs at least one")
    return None if stats[2] == T else attention_mask  # no padding anywhere: let the fast paths skip the mask


class RobertaModel(PreTrained):
    """The bare encoder: returns last_hidden_state (B, T, H) and, if asked, every layer's."""

    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = RobertaEmbeddings(cfg)
        self.layers = nn.ModuleList([Layer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.init_weights()

    def forward(
        self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False, token_type_ids=None
    ) -> Output:
        """token_type_ids (B, T): None adds type 0 everywhere, as RoBERTa does (one token type)."""
        pad_mask = check_inputs(self.config, input_ids, attention_mask, token_type_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        hidden_states, attentions = [x], []
        for layer in self.layers:
            x, att = layer(x, pad_mask, output_attentions)
            hidden_states.append(x)
            attentions.append(att)
        return Output(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


# --------------------------------------------------------------------------- heads


def lm_head(cfg: RobertaConfig) -> nn.Module:
    """The MLM head's own weights: dense -> gelu -> LN, then a bias on the tied decoder."""
    head = nn.Module()
    head.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
    head.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    head.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
    return head


class MaskedLMHead:
    """What RobertaForMaskedLM and RobertaForPreTraining share: the encoder with the LM head, and
    the head's masked-only loss."""

    def _add_encoder_and_lm_head(self, cfg: RobertaConfig) -> None:
        self.config = cfg
        self.roberta = RobertaModel(cfg)
        self.lm_head = lm_head(cfg)
        self.act = ACT2FN[cfg.hidden_act]

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> vocabulary logits (..., V)."""
        h = self.lm_head.norm(self.act(self.lm_head.dense(h)))
        return F.linear(h, self.roberta.embeddings.word_embeddings.weight, self.lm_head.bias)

    def masked_lm(self, h: torch.Tensor, labels: torch.Tensor, input_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, V) at the N labelled positions in row-major order, their mean cross-entropy)."""
        check_labels(labels, input_shape, self.config.vocab_size)
        selected = labels != IGNORE_INDEX  # (B, T)
        logits = self.predict(h[selected])  # (N, V): the vocabulary projection only where it counts
        # subtle: the mean as sum / N, so a batch with nothing masked has loss 0 (and zero
        # gradients) instead of the 0/0 = NaN of a mean over nothing.
        loss = F.cross_entropy(logits.float(), labels[selected], reduction="sum") / selected.sum().clamp(min=1)
        return logits, loss


class RobertaForMaskedLM(MaskedLMHead, PreTrained):
    """Encoder + LM head: dense -> gelu -> LN -> decoder tied to the word embeddings (+ own bias)."""

    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self._add_encoder_and_lm_head(cfg)
        self.init_weights()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        labels=None,
        output_hidden_states=False,
        output_attentions=False,
        token_type_ids=None,
    ) -> Output:
        """Without labels: logits (B, T, V) at every position.

        With labels ((B, T), IGNORE_INDEX where nothing is predicted): the head runs only at
        the N labelled positions, like fairseq, so logits is (N, V) in row-major order and
        loss is the mean cross-entropy there, the same number the full head gives (0 when
        N = 0, where a plain mean would be NaN).
        """
        out = self.roberta(input_ids, attention_mask, output_hidden_states, output_attentions, token_type_ids)
        h = out.last_hidden_state
        if labels is None:
            return Output(
                logits=self.predict(h), last_hidden_state=h, hidden_states=out.hidden_states, attentions=out.attentions
            )
        logits, loss = self.masked_lm(h, labels, input_ids.shape)
        return Output(
            loss=loss, logits=logits, last_hidden_state=h, hidden_states=out.hidden_states, attentions=out.attentions
        )


class RobertaForPreTraining(MaskedLMHead, PreTrained):
    """BERT's pretraining objective on RoBERTa's encoder: masked LM + next-sentence prediction.

    The baseline RoBERTa's ablations remove (SEGMENT-PAIR+NSP, SENTENCE-PAIR+NSP). The MLM head
    is RobertaForMaskedLM's, under the same names (lm_head.*), so a checkpoint of this class
    loads into RobertaForMaskedLM and the fine-tuning heads, which ignore the NSP head.
    The NSP head is BERT's: a pooler (dense -> tanh on the <s> vector), then a linear layer to
    2 classes, 0 = B follows A (IsNext), 1 = B is a random segment (HF and BERT's convention).
    Its weights are nsp.pooler.* and nsp.classifier.*. Give token_type_ids (0 for `<s> A </s>`,
    1 for `</s> B </s>`) and a config with type_vocab_size=2.
    """

    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self._add_encoder_and_lm_head(cfg)
        self.nsp = nn.Module()
        self.nsp.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.nsp.classifier = nn.Linear(cfg.hidden_size, 2)
        self.init_weights()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        next_sentence_label=None,
        output_hidden_states=False,
        output_attentions=False,
    ) -> Output:
        """logits: the MLM logits, (B, T, V) without labels, else (N, V) at the N labelled
        positions only, as RobertaForMaskedLM. nsp_logits: (B, 2). loss: mlm_loss + nsp_loss,
        each a mean (over the masked tokens, over the sequences); the one given alone when
        only labels or only next_sentence_label is given."""
        out = self.roberta(input_ids, attention_mask, output_hidden_states, output_attentions, token_type_ids)
        h = out.last_hidden_state
        nsp_logits = self.nsp.classifier(torch.tanh(self.nsp.pooler(h[:, 0])))  # (B, 2): from <s>
        mlm_loss = nsp_loss = None
        if labels is None:
            logits = self.predict(h)
        else:
            logits, mlm_loss = self.masked_lm(h, labels, input_ids.shape)
        if next_sentence_label is not None:
            check_labels(next_sentence_label, (input_ids.shape[0],), 2)
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
        loss = nsp_loss if mlm_loss is None else mlm_loss if nsp_loss is None else mlm_loss + nsp_loss
        return Output(
            loss=loss,
            logits=logits,
            nsp_logits=nsp_logits,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            last_hidden_state=h,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class RobertaForSequenceClassification(PreTrained):
    """Classifies from the <s> token: dropout -> dense -> tanh -> dropout -> out_proj.

    The loss follows config.problem_type, or is inferred like the original: one label means
    regression (MSE), integer labels single-label (cross-entropy), float labels multi-label (BCE).
    """

    def __init__(self, cfg: RobertaConfig, num_labels: int | None = None):
        super().__init__()
        self.config = cfg = with_num_labels(cfg, num_labels)
        self.roberta = RobertaModel(cfg)
        self.classifier = nn.Module()
        self.classifier.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.dropout = nn.Dropout(head_dropout(cfg))
        self.init_weights()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        labels=None,
        output_hidden_states=False,
        output_attentions=False,
        token_type_ids=None,
    ) -> Output:
        out = self.roberta(input_ids, attention_mask, output_hidden_states, output_attentions, token_type_ids)
        x = self.dropout(out.last_hidden_state[:, 0])  # (B, H): the <s> token
        x = self.dropout(torch.tanh(self.classifier.dense(x)))
        logits = self.classifier.out_proj(x)  # (B, num_labels)
        loss = None if labels is None else self.loss(logits, labels)
        return Output(
            loss=loss,
            logits=logits,
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = self.config.num_labels
        problem = self.config.problem_type
        if problem is None:
            if n == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            labels = labels.to(logits.dtype)
            return F.mse_loss(logits.view(-1), labels.view(-1)) if n == 1 else F.mse_loss(logits, labels)
        if problem == "single_label_classification":
            check_labels(labels, (logits.shape[0],), n)
            return F.cross_entropy(logits, labels.view(-1))
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(f"multi-label labels must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class RobertaForTokenClassification(PreTrained):
    """One linear layer per token (NER, POS): dropout -> classifier."""

    def __init__(self, cfg: RobertaConfig, num_labels: int | None = None):
        super().__init__()
        self.config = cfg = with_num_labels(cfg, num_labels)
        self.roberta = RobertaModel(cfg)
        self.dropout = nn.Dropout(head_dropout(cfg))
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        labels=None,
        output_hidden_states=False,
        output_attentions=False,
        token_type_ids=None,
    ) -> Output:
        out = self.roberta(input_ids, attention_mask, output_hidden_states, output_attentions, token_type_ids)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            check_labels(labels, input_ids.shape, self.config.num_labels)
            # the mean over labelled tokens as sum / N: 0, not NaN, when nothing is labelled
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels), labels.reshape(-1), reduction="sum") / (
                labels != IGNORE_INDEX
            ).sum().clamp(min=1)
        return Output(
            loss=loss,
            logits=logits,
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class RobertaForQuestionAnswering(PreTrained):
    """Extractive QA: a linear layer gives each token a start and an end logit."""

    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.config = cfg
        self.roberta = RobertaModel(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)
        self.init_weights()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        start_positions=None,
        end_positions=None,
        output_hidden_states=False,
        output_attentions=False,
        token_type_ids=None,
    ) -> Output:
        out = self.roberta(input_ids, attention_mask, output_hidden_states, output_attentions, token_type_ids)
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).unbind(dim=-1)  # 2 x (B, T)
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence (answers cut off by truncation) are clamped to T
            # and ignored, as in the original.
            T = input_ids.shape[1]
            start = start_positions.view(-1).clamp(0, T)
            end = end_positions.view(-1).clamp(0, T)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=T) + F.cross_entropy(end_logits, end, ignore_index=T)
            ) / 2
        return Output(
            loss=loss,
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def with_num_labels(cfg: RobertaConfig, num_labels: int | None) -> RobertaConfig:
    """The config with num_labels set (label names only survive when the count is unchanged)."""
    if num_labels is None or num_labels == cfg.num_labels:
        return cfg
    return cfg.replace(num_labels=num_labels, label_names=None)


def head_dropout(cfg: RobertaConfig) -> float:
    return cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout


def check_labels(labels: torch.Tensor, shape, num_classes: int) -> None:
    """Class labels must have the given shape and lie in [0, num_classes) or be IGNORE_INDEX."""
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(shape)}")
    if labels.is_floating_point():
        raise ValueError(f"class labels must be integers, got {labels.dtype}")
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"label {labels[bad][0].item()} is out of range: labels must be in "
            f"[0, {num_classes}) or {IGNORE_INDEX} (ignored)"
        )


MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        RobertaModel,
        RobertaForMaskedLM,
        RobertaForSequenceClassification,
        RobertaForTokenClassification,
        RobertaForQuestionAnswering,
        RobertaForPreTraining,
    )
}


# --------------------------------------------------------------------------- loading weights


def build_model(cls, cfg: RobertaConfig, sd: dict, reinit_mismatched_heads: bool = False):
    """cls(cfg) holding the weights of `sd`: a float model, or an int8 one (int8.py) when
    cfg.quantization says the checkpoint was written by `roberta-scratch quantize`."""
    model = cls(cfg)
    if cfg.quantization is not None:
        swap_linears(model, cfg.quantization)
        sd = unpack_embeddings(sd)
    load_state(model, sd, reinit_mismatched_heads)
    return model


def load_state(model, sd: dict, reinit_mismatched_heads: bool = False) -> None:
    """Load a canonical state dict into `model`, reporting every problem by name.

    Errors: encoder keys missing or unexpected, any shape mismatch. Warnings: a head the
    checkpoint lacks (initialised fresh, as the original does) and heads it has that this
    model does not (ignored). reinit_mismatched_heads=True also starts a head afresh whose
    shape differs (a classifier fine-tuned for another label set). Then
    load_state_dict(strict=True).
    """
    sd = normalise_prefix(sd)
    bare = isinstance(model, RobertaModel)
    if bare:
        ignored_heads = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
        sd = {k[len(ENCODER_PREFIX) :]: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}
    target = model.state_dict()
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    if not bare:
        ignored_heads = [k for k in unexpected if k.startswith(HEAD_PREFIXES)]
    unexpected = [k for k in unexpected if k not in ignored_heads]
    fresh = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    missing = [k for k in missing if k not in fresh]
    mismatched = [k for k in sorted(set(sd) & set(target)) if sd[k].shape != target[k].shape]
    reshaped = [k for k in mismatched if reinit_mismatched_heads and k.startswith(HEAD_PREFIXES)]
    misshaped = [k for k in mismatched if k not in reshaped]

    def shapes(keys):
        return [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}" for k in keys]

    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys: {shapes(misshaped)}")
    if problems:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    if fresh:
        warnings.warn(
            f"{type(model).__name__}: the checkpoint has no weights for {fresh}; they are newly "
            "initialised. Train the model on a downstream task before using it.",
            stacklevel=3,
        )
    if reshaped:
        warnings.warn(
            f"{type(model).__name__}: checkpoint heads of another shape are newly initialised: "
            f"{shapes(reshaped)}. Train the model on a downstream task before using it.",
            stacklevel=3,
        )
    if ignored_heads:
        warnings.warn(
            f"{type(model).__name__}: checkpoint weights not used by this model: {ignored_heads}", stacklevel=3
        )
    full = {k: sd[k] if k in sd and k not in reshaped else target[k] for k in target}
    model.load_state_dict(full, strict=True)


def check_state_dict(cfg: RobertaConfig, sd: dict) -> None:
    """A canonical state dict holds every encoder key, only keys some model class has, each
    with the shape `cfg` implies (heads optional): what a converted checkpoint must satisfy."""
    wanted = {}
    with torch.device("meta"):
        for name, cls in MODEL_CLASSES.items():
            if name == "RobertaModel":
                continue
            wanted.update({k: v.shape for k, v in cls(cfg).state_dict().items()})
    encoder = {k for k in wanted if k.startswith(ENCODER_PREFIX)}
    missing = sorted(encoder - set(sd))
    unknown = sorted(set(sd) - set(wanted))
    misshaped = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(wanted[k])}" for k in sd if k in wanted and sd[k].shape != wanted[k]
    ]
    if missing or unknown or misshaped:
        raise ValueError(
            f"converted checkpoint is inconsistent: missing {missing}, unknown {unknown}, mis-shaped {misshaped}"
        )
