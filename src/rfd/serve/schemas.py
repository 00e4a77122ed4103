"""Request and response bodies of the HTTP API, as pydantic models (they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FORMATS",
    "ErrorResponse",
    "Float32Images",
    "InfoResponse",
    "JsonImages",
    "PngImages",
    "PredictRequest",
    "PredictResponse",
    "Usage",
    "UsageResponse",
]

FORMATS = ("json", "f32", "png")


class JsonImages(BaseModel):
    """Images as nested JSON lists."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["json"]
    images: list[Any] = Field(description="nested lists of shape (N, C, H, W), numbers in [0, 1]")


class Float32Images(BaseModel):
    """Images as one base64 string of raw little-endian float32 values, C order, with their shape."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["f32"]
    shape: list[int] = Field(description="[N, C, H, W]")
    dtype: Literal["float32"] = Field("float32", description="only little-endian float32 is accepted")
    data: str = Field(description="base64 of N*C*H*W little-endian float32 values in [0, 1]")


class PngImages(BaseModel):
    """Images as base64 PNG files, 8-bit (mode L for 1 channel, RGB for 3); pixel values are divided by 255."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["png"]
    images: list[str] = Field(description="one base64 PNG per image, each of the model's height and width")


PredictRequest = Annotated[JsonImages | Float32Images | PngImages, Field(discriminator="format")]


class Usage(BaseModel):
    """A key's query account: images answered in all (across restarts) and what is left."""

    name: str
    used: int
    budget: int | None
    remaining: int | None
    flagged: int | None = Field(None, description="with a stateful detector: images of the key flagged so far")
    banned: bool | None = Field(None, description="with a ban detector: whether the key's session has ended")


class PredictResponse(BaseModel):
    """One answer per image, in request order."""

    output: str = Field(description="the output setting: logits, probs, topk:K, top1, rounded:D or labels")
    n: int = Field(description="number of images answered (= queries charged)")
    scores: list[list[float] | None] | None = Field(None, description="(N, K) logits, probabilities or rounded "
                                                    "probabilities (null for an image a detector refused); absent "
                                                    "for topk, top1 and labels")
    top: list[list[tuple[int, float]]] | None = Field(None, description="topk / top1: per image the visible "
                                                      "[class, probability] pairs, best first (empty when refused); "
                                                      "absent otherwise")
    labels: list[int] = Field(description="(N,) the model's predicted class per image (-1: refused by the detector)")
    flagged: list[bool] | None = Field(None, description="with a stateful detector: per image, whether it flagged it")
    rejected: list[bool] | None = Field(None, description="with a stateful detector: per image, whether it went "
                                        "unanswered (charged all the same)")
    usage: Usage


class InfoResponse(BaseModel):
    model: str
    input_shape: list[int] = Field(description="[C, H, W] of one image")
    num_classes: int
    classes: list[str] | None
    output: str = Field(description="the output setting: logits, probs, topk:K, top1, rounded:D or labels")
    defense: dict[str, Any] = Field(description="the defense family; its parameters only if the operator allows")
    formats: list[str]
    max_batch: int = Field(description="most images per request")
    max_body_bytes: int = Field(description="largest request body accepted")
    version: str
    detector: dict[str, Any] | None = Field(None, description="the stateful detector and its settings (never its "
                                            "secret salt), or null")


class UsageResponse(Usage):
    per_second: int | None = Field(description="images allowed in any 1-second window (null: no limit)")
    per_minute: int | None = Field(description="images allowed in any 60-second window (null: no limit)")


class ErrorResponse(BaseModel):
    detail: str
    retry_after: float | None = None
    banned: bool | None = None
