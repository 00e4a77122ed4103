"""A black box that queries a model served by ``rfd serve`` over HTTP, so every attack runs unchanged against
a served (defended) model.

Accounting. The server charges every image it answers to the API key that sent it, including the forwards
of the uncounted success checks (``is_adversarial``), which an attacker would not pay for in the paper's
protocol. Two honest ways to square the counts:

* one key: the server's count for it equals ``queries.sum() + verification_forwards + reevaluation_forwards``
  of this black box (``sent["attack"] + sent["verify"]``, both kept here);
* a second "evaluator" key (``verify_api_key``): uncounted success checks and the final re-evaluation go to that
  key, so the attacker's key is charged exactly the attack's queries (charged checks included, with
  ``check="charged"``) and the evaluator key exactly the uncounted forwards.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Literal

import torch

from rfd.blackbox.base import Access, BlackBox, CheckMode, GradientsUnavailable
from rfd.blackbox.outputs import OutputSpec, parse_output

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RemoteBlackBox", "RemoteError", "encode_float32"]

logger = logging.getLogger(__name__)

_B64_OVERHEAD = 1024  # bytes of JSON around the base64 data, with room to spare


def encode_float32(x: torch.Tensor) -> dict[str, Any]:
    """The server's ``f32`` request body for images (N, C, H, W): base64 of little-endian float32, C order."""
    arr = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return {"format": "f32", "shape": list(arr.shape), "dtype": "float32",
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


class RemoteError(RuntimeError):
    """The server could not be reached, or refused a request. ``status`` is the HTTP status (None when
    there was no answer) and ``detail`` the server's message."""

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class RemoteBlackBox(BlackBox):
    """Query a model behind an ``rfd serve`` endpoint.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: the key charged for the attack's queries.
        access: ``"scores"`` or ``"labels"``; scores need a server that answers scores or probabilities.
        output: the output setting wanted (:mod:`rfd.blackbox.outputs`), or None for the server's own. A server
            answering logits or probabilities can be read in any coarser setting (computed here from its full
            answer: probs, topk:K, top1, rounded:D, labels; probabilities cannot give logits back); a server with
            a coarser setting is read only in that setting.
        budget, verify, check, reevaluate: as in :class:`~rfd.blackbox.base.BlackBox`.
        timeout: seconds to wait for each HTTP answer.
        verify_api_key: optional second key for the uncounted success checks (see the module docstring).
        rate_limit_wait: on a 429 (rate limit) wait as the server asks and retry, for at most this many
            seconds per request in all; 0 raises at once.
        max_batch: most images per HTTP request (default: what the server and the key's rate limits allow).

    Images leave as the compact ``f32`` format (base64 little-endian float32, exact); answers come back as
    float32 tensors on the CPU. Raises :class:`RemoteError` with the server's message on any refusal. No
    gradients (``supports_gradients`` is False): white-box attacks cannot run against a served model.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        access: Access = "scores",
        output: str | OutputSpec | None = None,
        budget: int | None = None,
        verify: int = 9,
        check: CheckMode = "free",
        reevaluate: int = 100,
        timeout: float = 30.0,
        verify_api_key: str | None = None,
        rate_limit_wait: float = 60.0,
        max_batch: int | None = None,
        transport: Any = None,
    ) -> None:
        import httpx

        super().__init__(access=access, output=output or "logits", budget=budget, verify=verify, check=check,
                         reevaluate=reevaluate)
        if not api_key:
            raise ValueError("api_key is empty")
        if timeout <= 0 or rate_limit_wait < 0:
            raise ValueError(f"timeout must be > 0 and rate_limit_wait >= 0, got {timeout}, {rate_limit_wait}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.rate_limit_wait = rate_limit_wait
        self._keys = {"attack": api_key, "verify": verify_api_key or api_key}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._verifying = False
        # Images sent per purpose since start(): "attack" = charged queries, "verify" = success checks.
        self.sent = {"attack": 0, "verify": 0}
        try:
            self.info = self._call("GET", "/v1/info")
            usage = {role: self._call("GET", "/v1/usage", key=key) for role, key in self._keys.items()}
        except Exception:
            self._http.close()
            raise
        try:
            self.server_output: OutputSpec = parse_output(self.info["output"])
        except ValueError as e:
            self.close()
            raise RemoteError(f"the server at {self.url} names an output setting rfd does not know ({e})") from None
        self.input_shape = tuple(int(s) for s in self.info["input_shape"])
        self._num_classes = int(self.info["num_classes"])
        if output is None:
            self.output = self.server_output
        elif not _derivable(self.server_output, self.output):
            self.close()
            raise ValueError(f"the server at {self.url} answers {self.server_output}; output {self.output} cannot "
                             "be computed from that (a logits or probs server can be read in any coarser setting)")
        if access == "scores" and not self.output.scores:
            self.close()
            raise ValueError(f"the server at {self.url} answers labels only; use access='labels'")
        self.max_batch = self._chunk_size(usage, max_batch)

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, key: str | None = None, body: dict[str, Any] | None = None) -> Any:
        import httpx

        headers = {"X-API-Key": key if key is not None else self._keys["attack"]}
        waited = 0.0
        while True:
            try:
                r = self._http.request(method, path, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise RemoteError(f"{method} {self.url}{path}: no answer within {self.timeout:g} s ({exc})") from exc
            except httpx.TransportError as exc:
                raise RemoteError(f"cannot reach the rfd server at {self.url}: {exc}") from exc
            if r.status_code == 429 and waited < self.rate_limit_wait:
                pause = self._retry_after(r)
                if pause is not None and waited + pause <= self.rate_limit_wait:
                    logger.info("rate limited by %s; waiting %.2f s", self.url, pause)
                    time.sleep(pause)
                    waited += pause
                    continue
            if r.status_code >= 400:
                detail = self._detail(r)
                raise RemoteError(f"{method} {self.url}{path} refused with HTTP {r.status_code}: {detail}",
                                  status=r.status_code, detail=detail)
            try:
                return r.json()
            except ValueError as exc:
                raise RemoteError(f"{method} {self.url}{path}: answer is not JSON", status=r.status_code) from exc

    @staticmethod
    def _detail(r: Any) -> str:
        try:
            body = r.json()
            return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
        except ValueError:
            return r.text[:500] or r.reason_phrase

    @staticmethod
    def _retry_after(r: Any) -> float | None:
        try:
            return float(r.json()["retry_after"])  # exact seconds, when the server gives them
        except (ValueError, KeyError, TypeError):
            pass
        try:
            return float(r.headers["retry-after"])
        except (KeyError, ValueError):
            return None

    def _chunk_size(self, usage: dict[str, dict[str, Any]], requested: int | None) -> int:
        per_image = math.ceil(math.prod(self.input_shape) * 4 / 3) * 4  # base64 of float32, 4 chars per 3 bytes
        by_body = (int(self.info["max_body_bytes"]) - _B64_OVERHEAD) // per_image
        sizes = [int(self.info["max_batch"]), by_body]
        for u in usage.values():  # a batch over a key's window limit could never be answered
            sizes += [int(u[w]) for w in ("per_second", "per_minute") if u.get(w) is not None]
        if requested is not None:
            if requested < 1:
                raise ValueError(f"max_batch must be >= 1, got {requested}")
            sizes.append(requested)
        size = min(sizes)
        if size < 1:
            raise ValueError(f"the server at {self.url} cannot take even one image per request "
                             f"(max_body {self.info['max_body_bytes']} bytes)")
        return size

    def usage(self, role: Literal["attack", "verify"] = "attack") -> dict[str, Any]:
        """The server's account of a key: name, used, budget, remaining, rate limits (not charged)."""
        return self._call("GET", "/v1/usage", key=self._keys[role])

    # -- BlackBox -----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def start(self, n: int) -> None:
        super().start(n)
        self.sent = {"attack": 0, "verify": 0}

    def _predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward on the server (several requests when x is larger than a request may be)."""
        role = "verify" if self._verifying else "attack"
        scores, labels, refused = [], [], []
        for i in range(0, x.shape[0], self.max_batch):
            chunk = x[i: i + self.max_batch]
            answer = self._call("POST", "/v1/predict", key=self._keys[role], body=encode_float32(chunk))
            if int(answer.get("n", -1)) != chunk.shape[0]:
                raise RemoteError(f"server answered {answer.get('n')} images for {chunk.shape[0]} sent")
            self.sent[role] += chunk.shape[0]
            labels.append(torch.tensor(answer["labels"], dtype=torch.int64))
            # a server with a stateful detector says which images it refused (label -1, no scores)
            refused.append(torch.tensor(answer.get("rejected") or [False] * chunk.shape[0], dtype=torch.bool))
            if self.server_output.scores:
                try:
                    scores.append(self.server_output.from_json(answer, self._num_classes))
                except (ValueError, RuntimeError) as e:
                    raise RemoteError(f"server answer does not match its output setting {self.server_output}: "
                                      f"{e}") from None
        out = {"labels": torch.cat(labels)}
        if role == "attack":
            self.last_rejected = torch.cat(refused)
        if scores:
            out["scores"] = torch.cat(scores)
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.server_output.scores:
            raise PermissionError(f"the server at {self.url} answers labels only")
        s = self._predict(x)["scores"]
        if self.output == self.server_output:
            return s
        # a coarser setting from the server's full answer: log-probabilities are logits of the same softmax
        return self.output.answer(s.clamp_min(1e-30).log() if self.server_output.probabilities else s)

    def _forward_labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)["labels"]

    def logits_with_grad(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Not available (``supports_gradients`` is False): raises :class:`GradientsUnavailable`."""
        raise GradientsUnavailable(
            f"white-box attacks need gradients; a remote black box (rfd serve at {self.url}) answers "
            "scores/labels only"
        )

    def _uncounted_labels(self, x: torch.Tensor) -> torch.Tensor:
        # Uncounted checks and re-evaluations go to the verification key (the same key unless verify_api_key
        # was given); charged checks go to the attacker's key like any query.
        self._verifying = True
        try:
            return self._forward_labels(x)
        finally:
            self._verifying = False

    # -- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _derivable(server: OutputSpec, wanted: OutputSpec) -> bool:
    """Whether ``wanted`` can be computed from the answers of a server in setting ``server``."""
    if wanted == server or wanted.kind == "labels":
        return True
    if server.kind == "logits":
        return True
    return server.kind == "probs" and wanted.kind != "logits"
