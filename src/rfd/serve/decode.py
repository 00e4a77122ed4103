"""Turn a request body into a checked image batch, or a :class:`ServeError` that says what is wrong.

Every way a body can be wrong ends here as a 4xx: malformed JSON (400), a batch with too many images (413),
anything else about the images (422: shape, dtype, NaN/inf, range, bad base64 or PNG). Nothing a client sends
can raise anything else, so a bad request never takes the server down.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError

from rfd.blackbox.remote import encode_float32  # the client side of the f32 format
from rfd.data.checks import check_images
from rfd.serve.errors import ServeError
from rfd.serve.schemas import FORMATS, Float32Images, JsonImages, PngImages, PredictRequest

__all__ = ["PREDICT_REQUEST", "decode_images", "encode_float32", "encode_png"]

PREDICT_REQUEST = TypeAdapter(PredictRequest)


def _shape_text(input_shape: tuple[int, ...], max_batch: int) -> str:
    return f"(N, {', '.join(map(str, input_shape))}) with 1 <= N <= {max_batch}"


def _parse(body: bytes) -> Any:
    if not body:
        raise ServeError(400, "empty request body: send a JSON object with 'format' and the images")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ServeError(400, "request body is not valid JSON: nested too deeply") from None


def _validate(obj: Any) -> JsonImages | Float32Images | PngImages:
    if not isinstance(obj, dict):
        raise ServeError(422, f"request body must be a JSON object, got {type(obj).__name__}")
    fmt = obj.get("format")
    if fmt not in FORMATS:
        got = "missing" if "format" not in obj else f"{fmt!r}"
        raise ServeError(422, f"'format' must be one of {', '.join(FORMATS)}; got {got}")
    try:
        return PREDICT_REQUEST.validate_python(obj)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err["loc"][1:])  # loc[0] is the discriminator tag
            msgs.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise ServeError(422, f"bad '{fmt}' request: " + "; ".join(msgs) + more) from None


def _check_count(n: int, max_batch: int) -> None:
    if n > max_batch:
        raise ServeError(413, f"too many images: {n} in one request, this server answers at most {max_batch}; "
                              "split the batch")
    if n < 1:
        raise ServeError(422, "no images in the request")


def _from_nested(req: JsonImages, max_batch: int) -> torch.Tensor:
    _check_count(len(req.images), max_batch)
    try:
        x = torch.tensor(req.images)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ServeError(422, f"images must be nested lists of numbers of equal lengths: {exc}") from None
    if x.dtype == torch.bool or x.is_complex():
        raise ServeError(422, f"images must hold numbers in [0, 1], got {x.dtype} values")
    return x.float()


def _from_float32(req: Float32Images, input_shape: tuple[int, ...], max_batch: int) -> torch.Tensor:
    shape = tuple(req.shape)
    if len(shape) != 1 + len(input_shape):
        raise ServeError(422, f"shape must be {_shape_text(input_shape, max_batch)}, got {list(shape)}")
    _check_count(shape[0], max_batch)
    if shape[1:] != input_shape:
        raise ServeError(422, f"shape must be {_shape_text(input_shape, max_batch)}, got {list(shape)}")
    try:
        raw = base64.b64decode(req.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServeError(422, f"data is not valid base64: {exc}") from None
    want = math.prod(shape) * 4
    if len(raw) != want:
        raise ServeError(422, f"data holds {len(raw)} bytes, shape {list(shape)} of float32 needs {want}")
    arr = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=True)  # native order, writable
    return torch.from_numpy(arr).view(shape)


def _from_png(req: PngImages, input_shape: tuple[int, ...], max_batch: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    _check_count(len(req.images), max_batch)
    c, h, w = input_shape
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise ServeError(422, f"PNG input needs a 1- or 3-channel model, this one takes {c} channels; use 'f32'")
    pixels = []
    for i, b64 in enumerate(req.images):
        try:
            img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)), formats=["PNG"])
            # The header is read lazily: check the size before decoding any pixel (no decompression bombs).
            if img.size != (w, h):
                raise ServeError(422, f"png image {i} is {img.size[0]}x{img.size[1]} pixels, the model takes "
                                      f"{w}x{h}")
            if img.mode != mode:
                raise ServeError(422, f"png image {i} has mode {img.mode!r}; the model takes {c}-channel images: "
                                      f"send 8-bit PNG of mode {mode!r}")
            pixels.append(np.asarray(img, dtype=np.uint8).reshape(h, w, c))
        except ServeError:
            raise
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ServeError(422, f"png image {i} is not a readable base64 PNG file: {exc}") from None
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0).contiguous()


def decode_images(body: bytes, input_shape: tuple[int, ...], max_batch: int) -> torch.Tensor:
    """Images float32 (N, C, H, W) in [0, 1] from a predict request body.

    Args:
        body: the raw request body (JSON, see :mod:`rfd.serve.schemas` for the three formats).
        input_shape: (C, H, W) the model takes.
        max_batch: the most images one request may hold.

    Raises:
        ServeError: 400 malformed JSON, 413 too many images, 422 anything else wrong with the images.
    """
    req = _validate(_parse(body))
    if isinstance(req, JsonImages):
        x = _from_nested(req, max_batch)
    elif isinstance(req, Float32Images):
        x = _from_float32(req, input_shape, max_batch)
    else:
        x = _from_png(req, input_shape, max_batch)
    if x.dim() != 1 + len(input_shape) or tuple(x.shape[1:]) != input_shape:
        raise ServeError(422, f"images must have shape {_shape_text(input_shape, max_batch)}, got {tuple(x.shape)}")
    try:
        check_images(x)
    except ValueError as exc:
        raise ServeError(422, str(exc)) from None
    return x


def encode_png(x: torch.Tensor) -> dict[str, Any]:
    """The ``png`` request body for images (N, C, H, W) in [0, 1] with C = 1 or 3 (rounded to 8 bits)."""
    from PIL import Image

    check_images(x)
    u8 = (x.detach().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return {"format": "png", "images": out}
