"""A Python client for the chainrule HTTP API (``docs/api.md``), over httpx.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="demo-key") as api:
        job = api.submit("examples/logistic_regression.json", "examples/data/seed_data.json",
                         lr=0.5, steps=300, batch_size=16)
        for step in api.stream(job["id"]):          # live, resumable Server-Sent Events
            print(step["step"], step["loss"])
        params = api.result(job["id"])["params"]    # {name: np.ndarray}

Every error response becomes a :class:`ClientError` carrying the RFC 9457 problem; a
server that cannot be reached is an :class:`APIUnreachable`. Request bodies go out as
msgpack (tensors as raw little-endian bytes, exact and compact); responses are JSON.

The whole client is this one module (so past 300 lines): a user copies or reads one file,
and it imports nothing of the server, and the runtime only when asked for it (tensor files,
a ``runtime.TrainingSpec``): graphspec, numpy and httpx.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import httpx
import numpy as np

import graphspec
from graphspec.codec import detect_encoding, pack
from graphspec.errors import Issue
from graphspec.tensors import decode_tensor, encode_tensor_raw

if TYPE_CHECKING:
    from runtime.spec import TrainingSpec

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "CHAINRULE_API_KEY"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
MSGPACK = "application/msgpack"
# A result's tensors are as large as the server allowed; the client does not re-limit them.
_NO_LIMIT = 2**62

class ClientError(Exception):
    """The API answered with an error: ``status`` and the RFC 9457 ``problem`` document.

    ``str(error)`` is readable on its own: status, title, detail and each located issue::

        422 Invalid graph document: the graph document has 1 problem
          /graph/nodes/0/op: unknown op 'matmull' (hint: did you mean 'matmul' or 'mul'?)
    """

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after: float | None = None):
        self.status = status
        self.problem = dict(problem)
        # seconds the server asks to wait before retrying (429 over a limit, 503 unavailable)
        self.retry_after = retry_after
        super().__init__(self._message())

    @property
    def limit(self) -> str | None:
        """The per-tenant limit a 429 names (``max_queued_jobs``, ``requests_per_second``...)."""
        limit = self.problem.get("limit")
        return None if limit is None else str(limit)

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or "Error")

    @property
    def detail(self) -> str | None:
        detail = self.problem.get("detail")
        return None if detail is None else str(detail)

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def _message(self) -> str:
        head = f"{self.status} {self.title}"
        # A single located error usually repeats the detail: say it once, with its location.
        repeated = len(self.errors) == 1 and self.errors[0].get("message") == self.detail
        if self.detail and not repeated:
            head += f": {self.detail}"
        lines = [head]
        for error in self.errors:
            line = f"  {error.get('location') or '/'}: {error.get('message', '')}"
            if error.get("hint"):
                line += f" (hint: {error['hint']})"
            lines.append(line)
        return "\n".join(lines)


class APIUnreachable(ConnectionError):
    """No connection to the API could be made (refused, unknown host, connect timeout)."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the chainrule API at {url}: {reason}")


def _problem_from(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "title" not in body:
        text = response.text.strip()
        body = {"title": response.reason_phrase or "Error", "status": response.status_code,
                "detail": text[:500] or None}
    try:
        retry_after = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    return ClientError(response.status_code, body, retry_after)


# -- request bodies ---------------------------------------------------------------------------

def _read_document(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise graphspec.GraphSpecError([Issue("io_error", "", f"cannot read {path}: {exc.strerror or exc}")]) from None


def _graph_field(graph: Any) -> tuple[str, Any]:
    """("graph", tree) for an inline document, or ("graph_id", id) for a stored one.

    A file is parsed (JSON or msgpack) but not validated here: the server checks it and
    reports every problem located in the request body (``/graph/...``).
    """
    if isinstance(graph, graphspec.Graph):
        return "graph", graphspec.parse(graphspec.dumps(graph, "msgpack"), "msgpack")
    if isinstance(graph, Mapping):
        return "graph", dict(graph)
    if isinstance(graph, str) and graph.startswith("sha256:"):
        return "graph_id", graph
    if isinstance(graph, (str, os.PathLike)):
        return "graph", graphspec.parse(_read_document(graph))
    raise TypeError(f"graph must be a graphspec.Graph, a file path, a document or a 'sha256:...' id, "
                    f"not {type(graph).__name__}")


def _tensor(value: Any) -> Any:
    if isinstance(value, Mapping) and "dtype" in value and "shape" in value:
        return dict(value)  # already in the tensor encoding
    return encode_tensor_raw(np.asarray(value))


def _tensor_map(data: Any) -> dict[str, Any]:
    """Named tensors from a dict (arrays, lists, scalars or encoded tensors) or a tensor file."""
    if isinstance(data, (str, os.PathLike)):
        from runtime.data import load_tensors

        data = load_tensors(data)
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict of arrays or a tensor file path, not {type(data).__name__}")
    return {str(name): _tensor(value) for name, value in data.items()}


def _training_body(spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The body's training fields from a TrainingSpec, a dict of them, or keywords (setting names, and
    the optimizer's hyperparameters beside ``optimizer``); None values are left out."""
    from runtime.spec import TrainingSpec, settings

    if spec is not None:
        if options:
            raise TypeError(f"give the training settings as spec or as keywords, not both ({', '.join(options)})")
        return spec.to_body() if isinstance(spec, TrainingSpec) else dict(spec)
    names = {f.name for f, _ in settings()}
    body = {k: v for k, v in options.items() if k in names and k != "optimizer" and v is not None}
    hyper = {k: v for k, v in options.items() if k not in names and v is not None}
    optimizer = options.get("optimizer", "sgd")
    if isinstance(optimizer, str):
        body["optimizer"] = {"name": optimizer, **hyper}
    elif isinstance(optimizer, Mapping) and "name" in optimizer:
        both = sorted(set(hyper) & set(optimizer))
        if both:
            raise TypeError(f"{', '.join(both)} given both in the optimizer object and as a keyword; give it once")
        body["optimizer"] = {**optimizer, **hyper}
    else:
        raise TypeError("optimizer must be a name ('sgd', 'adam', ...) or an object such as "
                        "{'name': 'adam', 'lr': 0.001}")
    return body


def _decode_tensors(tree: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    return {name: decode_tensor(obj, f"{where}/{name}", max_elements=_NO_LIMIT, allow_nonfinite=True)
            for name, obj in tree.items()}


# -- Server-Sent Events -----------------------------------------------------------------------

class StepStream:
    """The step entries of a job, live: iterate it for step dicts (``{"step", "loss", "grad_norms", ...}``).

    It ends after the server's ``end`` event, whose job resource is then in :attr:`job`. A
    dropped connection is resumed with ``Last-Event-ID`` (the last step received), so no step
    is lost or repeated; after ``max_retries`` failed reconnects in a row the error is raised.
    """

    def __init__(self, client: Client, job_id: str, after: int | None, *, max_retries: int = 5,
                 backoff: float = 0.2):
        self.client = client
        self.job_id = job_id
        self.last_id: int | None = after
        self.job: dict[str, Any] | None = None
        self.reconnects = 0
        self.connected = False
        self.max_retries = max_retries
        self.backoff = backoff
        self._iterator: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def __next__(self) -> dict[str, Any]:
        return next(iter(self))

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]

    def _run(self) -> Iterator[dict[str, Any]]:
        failures = 0
        while True:
            error: Exception | None = None
            try:
                for event, data, event_id in self._connect():
                    if event == "step":
                        step = json.loads(data)
                        if event_id is not None:
                            self.last_id = int(event_id)
                        failures = 0
                        yield step
                    elif event == "end":
                        self.job = json.loads(data)
                        return
                    elif event == "error":
                        problem = json.loads(data)
                        raise ClientError(int(problem.get("status") or 500), problem)
                # The stream closed without an end event: the connection dropped; resume.
            except APIUnreachable as exc:
                if not self.connected:  # never reached the server: nothing to resume
                    raise
                error = exc
            except httpx.TransportError as exc:
                error = exc
            failures += 1
            if failures > self.max_retries:
                if error is not None:
                    raise error
                raise APIUnreachable(self.client.base_url, "the event stream keeps closing before its end event")
            time.sleep(self.backoff * 2 ** (failures - 1))
            self.reconnects += 1

    def _connect(self) -> Iterator[tuple[str, str, str | None]]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        with self.client._stream("GET", f"/v1/jobs/{self.job_id}/events", headers=headers) as response:
            self.connected = True
            yield from parse_sse(response.iter_lines())


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) for each event in a text/event-stream (comments such as pings are skipped)."""
    event, data, event_id = "message", [], None
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield event, "\n".join(data), event_id


# -- the client -------------------------------------------------------------------------------

class Client:
    """The chainrule API.

    ``api_key`` defaults to ``$CHAINRULE_API_KEY``. ``transport`` is handed to the httpx client
    (e.g. an ``httpx.MockTransport``); ``http`` replaces the httpx client altogether, e.g. a
    FastAPI ``TestClient`` (it is an ``httpx.Client``), whose own base URL is then used.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30,
                 transport: httpx.BaseTransport | None = None, *, http: httpx.Client | None = None):
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout = timeout
        if http is not None:
            self._http, self._owned = http, False
            self.base_url = str(http.base_url).rstrip("/")
        else:
            self.base_url = base_url.rstrip("/")
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
            self._owned = True

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- plumbing --------------------------------------------------------------------------
    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                **kwargs: Any) -> httpx.Response:
        """One request; a ClientError for any 4xx/5xx, APIUnreachable when no connection can be made."""
        try:
            response = self._http.request(method, path, headers=self._headers(headers), **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise APIUnreachable(self.base_url, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            raise _problem_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def _stream(self, method: str, path: str, *, headers: Mapping[str, str] | None = None
                ) -> Iterator[httpx.Response]:
        """A streaming response (errors raised as in :meth:`request`)."""
        # The server pings an idle event stream every 15 s: a longer silence is a dead connection.
        # (A client passed in as ``http`` keeps its own timeouts; a TestClient refuses any.)
        kwargs: dict[str, Any] = {}
        if self._owned:
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))
        try:
            with self._http.stream(method, path, headers=self._headers(headers), **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _problem_from(response)
                yield response
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise APIUnreachable(self.base_url, str(exc) or type(exc).__name__) from None

    # -- graphs ----------------------------------------------------------------------------
    def post_graph(self, graph: Any) -> dict[str, Any]:
        """Store a graph (a Graph, a JSON/msgpack file or a document dict): ``{"id", "summary"}``."""
        if isinstance(graph, graphspec.Graph):
            content, media = graphspec.dumps(graph, "msgpack"), MSGPACK
        elif isinstance(graph, Mapping):
            content, media = pack(dict(graph)), MSGPACK
        elif isinstance(graph, (str, os.PathLike)):
            content = _read_document(graph)
            media = MSGPACK if detect_encoding(content) == "msgpack" else "application/json"
        else:
            raise TypeError(f"graph must be a graphspec.Graph, a file path or a document, not {type(graph).__name__}")
        return self._json("POST", "/v1/graphs", content=content, headers={"Content-Type": media})

    def delete_graph(self, graph_id: str) -> None:
        """Delete a stored graph that no stored job uses (409 names the jobs that still do)."""
        self.request("DELETE", f"/v1/graphs/{graph_id}")

    def graph(self, graph_id: str) -> graphspec.Graph:
        """A stored graph, read back and validated."""
        response = self.request("GET", f"/v1/graphs/{graph_id}", headers={"Accept": MSGPACK})
        return graphspec.loads(response.content, "msgpack")

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, graph: Any, data: Any = None, spec: "TrainingSpec | Mapping[str, Any] | None" = None, *,
               eval_data: Any = None, idempotency_key: str | None = None, **options: Any) -> dict[str, Any]:
        """Submit a training job; returns the job resource (``{"id", "state": "queued", ...}``).

        ``graph``: a Graph, a graph file (sent inline), a document dict, or the ``sha256:...`` id of a
        stored graph. ``data``/``eval_data``: dicts of arrays or tensor files (.npz/.json/.msgpack).
        The training settings (runtime.TrainingSpec's fields) come in one of three forms:

        * keywords: ``submit(g, data, optimizer="sgd", lr=0.5, momentum=0.9, steps=100)`` — setting
          names, and the optimizer's hyperparameters beside it (or ``optimizer={"name": "adam", ...}``);
        * ``spec``: a ``runtime.TrainingSpec``, or a dict of the HTTP body's training fields;
        * the whole HTTP body as one dict: ``submit({"graph": ..., "data": ..., "optimizer": ..., "steps": 100})``.

        Settings left out take their defaults (``runtime.TrainingSpec``, ``runtime.optimizer_defaults``);
        the server validates everything and answers a 422 naming the field. With the same
        ``idempotency_key`` a repeated call returns the first job.
        """
        if isinstance(graph, Mapping) and data is None and "data" in graph:  # the HTTP body's shape
            body = dict(graph)
            for key in ("data", "eval_data"):
                if body.get(key) is not None:
                    body[key] = _tensor_map(body[key])
            if "graph" in body and not isinstance(body["graph"], Mapping):
                body["graph"] = _graph_field(body["graph"])[1]
            body.update(_training_body(spec, options) if spec is not None or options else {})
        else:
            field, value = _graph_field(graph)
            body = {field: value, "data": _tensor_map(data), **_training_body(spec, options)}
            if eval_data is not None:
                body["eval_data"] = _tensor_map(eval_data)
        headers = {"Content-Type": MSGPACK}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self._json("POST", "/v1/jobs", content=pack(body), headers=headers)

    # -- hyperparameter sweeps (docs/training.md) -------------------------------------------
    def submit_sweep(self, graph: Any, data: Any, space: Mapping[str, Any], spec: Any = None, *,
                     max_trials: int, method: str = "random", seed: int = 0, max_concurrent: int = 2,
                     early_termination: Mapping[str, Any] | None = None, eval_data: Any = None,
                     **options: Any) -> dict[str, Any]:
        """Start a sweep: the base job (``graph``, ``data``, ``eval_data`` and its training settings,
        as :meth:`submit` takes them) trained with each of ``space``'s assignments
        (``{"optimizer.lr": {"log_uniform": [1e-3, 1]}}``); returns the sweep resource."""
        field, value = _graph_field(graph)
        base = {field: value, "data": _tensor_map(data), **_training_body(spec, options)}
        if eval_data is not None:
            base["eval_data"] = _tensor_map(eval_data)
        body = {"base": base, "space": dict(space), "method": method, "seed": seed, "max_trials": max_trials,
                "max_concurrent": max_concurrent, "early_termination": early_termination}
        return self._json("POST", "/v1/sweeps", content=pack(body), headers={"Content-Type": MSGPACK})

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """The sweep resource: its state, every trial launched (job id, values, state, objective), the best."""
        return self._json("GET", f"/v1/sweeps/{sweep_id}")

    def sweeps(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/sweeps", params={"limit": limit})["sweeps"]

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """Launch no more trials and cancel the running ones."""
        return self._json("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def wait_sweep(self, sweep_id: str, poll: float = 0.5, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the sweep has finished (succeeded or cancelled); TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.sweep(sweep_id)
            if sweep["state"] in ("succeeded", "cancelled"):
                return sweep
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"sweep {sweep_id} is still {sweep['state']} after {timeout} s")
            time.sleep(poll)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job resource: state, step, total_steps, epoch, loss, timestamps, error..."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def steps(self, job_id: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of the step history: ``{"steps": [...], "next_after": int | None}``."""
        return self._json("GET", f"/v1/jobs/{job_id}/steps", params={"after": after, "limit": limit})

    def iter_steps(self, job_id: str, after: int = 0, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every step entry recorded so far, page after page (for a finished job: all of them)."""
        while True:
            page = self.steps(job_id, after=after, limit=page_size)
            yield from page["steps"]
            if page["next_after"] is None or not page["steps"]:
                return
            after = page["next_after"]

    def stream(self, job_id: str, after: int | None = None) -> StepStream:
        """The job's step entries live (SSE), after step ``after``; the final job is in ``.job`` afterwards."""
        return StepStream(self, job_id, after)

    def wait(self, job_id: str, poll: float = 0.2, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the job has finished (succeeded, failed or cancelled); TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job["state"] in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout} s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (queued: at once; running: ``cancelling`` until the worker stops). 409 once finished."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        """Delete a finished job and everything it stored (409 while it is queued or running)."""
        self.request("DELETE", f"/v1/jobs/{job_id}")

    def result(self, job_id: str) -> dict[str, Any]:
        """``{"loss", "steps", "epochs", "eval_loss", "params": {name: np.ndarray}}`` of a succeeded job."""
        out = self._json("GET", f"/v1/jobs/{job_id}/result")
        out["params"] = _decode_tensors(out.get("params") or {}, "/params")
        return out

    def model_onnx(self, job_id: str, keep_loss: bool = False) -> bytes:
        """A succeeded job's trained model as ONNX bytes (``onnx.load_from_string``; onnxruntime's
        ``InferenceSession`` takes them as they are). The server needs the onnx extra. ``keep_loss``:
        the loss output too, with the targets and labels it reads as inputs (docs/onnx.md)."""
        params = {"keep_loss": "true"} if keep_loss else None
        return self.request("GET", f"/v1/jobs/{job_id}/model.onnx", params=params).content

    def jobs(self, state: str | None = None, limit: int = 50, cursor: str | None = None) -> list[dict[str, Any]]:
        """The tenant's jobs, newest first (one page; see :meth:`iter_jobs` for all)."""
        return self.jobs_page(state, limit, cursor)["jobs"]

    def jobs_page(self, state: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        if cursor is not None:
            params["cursor"] = cursor
        return self._json("GET", "/v1/jobs", params=params)

    def iter_jobs(self, state: str | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self.jobs_page(state, page_size, cursor)
            yield from page["jobs"]
            cursor = page["next_cursor"]
            if cursor is None or not page["jobs"]:
                return


__all__ = ["APIUnreachable", "Client", "ClientError", "DEFAULT_URL", "StepStream", "TERMINAL_STATES", "parse_sse"]
