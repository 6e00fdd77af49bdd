"""Every request and response of the server as a typed model (FastAPI draws /docs from them).

The routes follow text-embeddings-inference's names and shapes where it has the route, and
OpenAI's for /v1/embeddings; /predict answers with the JSON `roberta-scratch predict` prints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------------------- inputs


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextInput(Strict):
    """seq-cls (a text, or a pair) or token-cls (a text split into words for you)."""

    text: str
    text_pair: str | None = None


class WordsInput(Strict):
    """token-cls, already split into words."""

    tokens: list[str]


class QuestionInput(Strict):
    """qa: the answer is a span of the context; a long context is read in overlapping windows."""

    question: str
    context: str
    id: str | None = None


PredictInput = str | TextInput | WordsInput | QuestionInput
Texts = str | list[str]


class PredictRequest(Strict):
    inputs: PredictInput | list[PredictInput] = Field(description="one input, or a list of them")
    truncate: bool = Field(False, description="cut an input that is too long instead of refusing the request")


class EmbedRequest(Strict):
    inputs: Texts
    normalize: bool = Field(True, description="scale each vector to length 1")
    truncate: bool = False
    pooling: Literal["mean", "cls"] | None = Field(None, description="the server's --pooling when not given")


class FillMaskRequest(Strict):
    inputs: Texts = Field(description="texts with <mask> in them")
    top_k: int = Field(5, ge=1, le=1000)
    truncate: bool = False


class TokenizeRequest(Strict):
    inputs: Texts
    add_special_tokens: bool = True


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's request: text, texts, token ids or lists of token ids (this model's own ids)."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must be the model's hidden size when given")
    user: str | None = None


# ---------------------------------------------------------------------------- outputs


class ClassPrediction(BaseModel):
    text: str
    text_pair: str | None = None
    label: str
    probability: float
    probabilities: dict[str, float]


class ValuePrediction(BaseModel):
    text: str
    text_pair: str | None = None
    value: float


class Entity(BaseModel):
    type: str
    words: list[int] = Field(description="first and one-past-last word")
    text: str
    score: float
    start: int | None = Field(None, description="character span in the text, for text inputs")
    end: int | None = None


class EntitiesPrediction(BaseModel):
    text: str
    entities: list[Entity]


class AnswerPrediction(BaseModel):
    id: str | None = None
    question: str
    answer: str = Field(description='"" when the model says the context holds no answer')
    start: int | None
    end: int | None
    probability: float
    logit_score: float


Prediction = ClassPrediction | ValuePrediction | EntitiesPrediction | AnswerPrediction


class MaskFill(BaseModel):
    token: str
    token_id: int
    score: float


class FillMaskResult(BaseModel):
    text: str
    masks: list[list[MaskFill]] = Field(description="per <mask>, the top_k fills, best first")


class Token(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(description="character span in the input; None for special tokens")
    stop: int | None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class Info(BaseModel):
    model_id: str
    task: str
    labels: list[str] | None
    max_input_length: int
    hidden_size: int
    layers: int
    quantization: dict | None = Field(description="how `roberta-scratch quantize` made it, or None")
    pruned_heads: dict[str, list[int]]
    backend: str
    device: str
    pooling: str
    routes: list[str]
    max_batch_tokens: int
    max_wait_ms: float
    max_queue: int
    max_client_batch_size: int
    max_request_bytes: int
    torch_threads: int
    workers: int
    version: str


class Health(BaseModel):
    status: Literal["ok", "loading", "draining", "failed"]


class ErrorBody(BaseModel):
    error: str
    error_type: str = Field(description="validation, unsupported, overloaded, unauthorized, backend, unhealthy")
    limit: dict[str, int] | None = None
