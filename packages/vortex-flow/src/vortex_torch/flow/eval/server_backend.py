"""The ``server`` backend: OpenAI-compatible ``/v1/completions`` endpoints (SGLang's HTTP server).

A Vortex budget is fixed when an SGLang server starts (``--vortex-config '{"topk_val": 30, ...}'``), so each
budget is its own server: ``--server-url`` once per budget, in the order of ``--budgets`` (which then only
labels them). The dense baseline is a server started without ``--vortex-config`` (``--dense-url``); it may be
the same model on another port. Requests are greedy (``temperature: 0``) and use only the standard library.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import EvalError, first_line
from .runner import Tick
from .tasks import Sample, TokenCounter, estimate_tokens


def _request(url: str, body: dict[str, Any] | None, timeout: float) -> Any:
    """GET (``body is None``) or POST JSON to ``url``; the decoded JSON answer, or one :class:`EvalError` line."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().replace("\n", " ")[:300]
        raise EvalError(f"{url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EvalError(f"cannot reach {url}: {reason} (is the server running?)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{url} did not answer JSON: {first_line(exc)}") from exc


def served_model(base_url: str, timeout: float) -> str:
    """The model id a server serves (``GET /v1/models``): the ``model`` field its completions require."""
    answer = _request(base_url.rstrip("/") + "/v1/models", None, timeout)
    try:
        return str(answer["data"][0]["id"])
    except (KeyError, IndexError, TypeError) as exc:
        raise EvalError(
            f"{base_url}/v1/models lists no model (answer {str(answer)[:200]}); pass --server-model"
        ) from exc


def complete(base_url: str, model: str, prompt: str, max_tokens: int, timeout: float) -> str:
    """One greedy completion: ``POST {base_url}/v1/completions`` -> ``choices[0].text``."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    answer = _request(base_url.rstrip("/") + "/v1/completions", body, timeout)
    try:
        return str(answer["choices"][0]["text"])
    except (KeyError, IndexError, TypeError) as exc:
        raise EvalError(
            f"{base_url}/v1/completions answered without choices[0].text: {str(answer)[:200]}"
        ) from exc


class ServerBackend:
    """Greedy completions from one server per budget (``urls``: label -> base URL) and an optional dense one.

    Args:
        urls: budget label -> base URL (``http://127.0.0.1:30000``), in the order of the budgets.
        dense_url: the server without Vortex, or ``None`` (then no dense accuracy and no agreement).
        model: the ``model`` field of each request; ``None`` asks each server's ``/v1/models``.
        count_tokens: sizes the prompts (a tokenizer); ``None`` estimates ~4 characters per token.
        concurrency: requests in flight per server (SGLang batches them).
        timeout: seconds per request.
    """

    kind = "server"

    def __init__(
        self,
        urls: dict[str, str],
        dense_url: str | None = None,
        model: str | None = None,
        count_tokens: TokenCounter | None = None,
        concurrency: int = 8,
        timeout: float = 600.0,
        tokenizer_name: str | None = None,
    ) -> None:
        self.urls = dict(urls)
        self.budget_labels = list(urls)
        self.dense_url = dense_url
        self.timeout = timeout
        self.concurrency = concurrency
        self._count = count_tokens or estimate_tokens
        self.tokenizer_name = tokenizer_name
        self._models: dict[str, str] = {}
        self._fixed_model = model

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def _model(self, url: str) -> str:
        if self._fixed_model is not None:
            return self._fixed_model
        if url not in self._models:
            self._models[url] = served_model(url, self.timeout)
        return self._models[url]

    def _run(self, url: str, samples: Sequence[Sample], tick: Tick) -> list[str]:
        model = self._model(url)

        def one(s: Sample) -> str:
            text = complete(url, model, s.prompt, s.max_new_tokens, self.timeout)
            tick()
            return text

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, samples))  # map keeps the order; the first error propagates

    def dense(self, samples: Sequence[Sample], tick: Tick) -> list[str] | None:
        return None if self.dense_url is None else self._run(self.dense_url, samples, tick)

    def sparse(self, samples: Sequence[Sample], budget: str, tick: Tick) -> list[str]:
        return self._run(self.urls[budget], samples, tick)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "servers": self.urls,
            "dense_url": self.dense_url,
            "model": self._fixed_model or next(iter(self._models.values()), None),
            "token_count": self.tokenizer_name or "estimate (4 characters per token)",
        }
