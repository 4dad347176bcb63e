"""`python3 kata.py serve`: kata 16's engine behind an OpenAI-compatible HTTP API.

    python3 kata.py serve                        # your engine (stubs/mini_engine.py), SmolLM2, CPU
    python3 kata.py serve --use-ref 04,07        # ... with our attention and allocator
    python3 kata.py serve --impl reference       # ours throughout
    python3 kata.py serve --device cuda          # on a GPU (bfloat16)

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(the model's chat template), both with `stream: true` as server-sent events. Any OpenAI
client works (base_url http://127.0.0.1:8000/v1).

The HTTP layer is ours; it wraps any engine with kata 16's interface (katas/16_mini_engine/
README.md): `add_request(request_id, prompt_token_ids, params)`, `abort(request_id)`,
`step() -> list[RequestOutput]`, `has_unfinished()`, `tokenizer`, `max_model_len`. The
engine lives in one thread (`EngineRunner`), which adds and aborts requests between steps
and hands each step's outputs to the waiting HTTP handlers.
"""
import argparse
import asyncio
import hmac
import ipaddress
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Union

API_KEY_ENV = "KATA_API_KEY"


# -- The engine's thread -------------------------------------------------------------------
class Handle:
    """One request in flight: its outputs arrive on `queue` (RequestOutput, or an exception)."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.accepted: asyncio.Future[None] = loop.create_future()

    def _put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _accept(self, error: BaseException | None) -> None:
        def settle() -> None:
            if not self.accepted.done():
                if error is None:
                    self.accepted.set_result(None)
                else:
                    self.accepted.set_exception(error)
        self.loop.call_soon_threadsafe(settle)


class EngineRunner:
    """Runs the engine in a thread of its own: requests come in through a queue between
    steps, each step's outputs go out to their requests' handles."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._commands: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._handles: dict[str, Handle] = {}
        self._thread = threading.Thread(target=self._loop, name="kata16-engine", daemon=True)
        self._stopping = threading.Event()
        self.steps = 0
        self.aborts = 0  # requests aborted (client gone)
        self.peak_in_flight = 0  # most requests in the engine at once
        self.errors: list[str] = []  # tracebacks of failed steps

    def start(self) -> "EngineRunner":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._commands.put(("wake",))
        self._thread.join(timeout=30)

    async def submit(self, prompt_ids: list[int], params: Any) -> Handle:
        """Add a request; raises the engine's ValueError if it refuses it."""
        handle = Handle(f"req-{uuid.uuid4().hex}", asyncio.get_running_loop())
        self._commands.put(("add", handle, prompt_ids, params))
        await handle.accepted
        return handle

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def in_flight(self) -> int:
        return len(self._handles)

    def _apply(self, command: tuple[Any, ...]) -> None:
        if command[0] == "add":
            _, handle, prompt_ids, params = command
            try:
                self.engine.add_request(handle.request_id, prompt_ids, params)
            except Exception as exc:  # noqa: BLE001 - refused: the client gets a 400
                handle._accept(exc)
                return
            self._handles[handle.request_id] = handle
            self.peak_in_flight = max(self.peak_in_flight, len(self._handles))
            handle._accept(None)
        elif command[0] == "abort":  # ("wake",) does nothing: stop() sends it
            if self._handles.pop(command[1], None) is not None:
                self.aborts += 1
                self.engine.abort(command[1])

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.has_unfinished():
                self._apply(self._commands.get())  # idle: sleep until a command comes
            while True:  # then take every command that waits, between two steps
                try:
                    self._apply(self._commands.get_nowait())
                except queue.Empty:
                    break
            if self._stopping.is_set() or not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - the engine's bug: fail what is in flight
                self.errors.append(traceback.format_exc())
                print(f"kata serve: engine.step() raised; failing {len(self._handles)} "
                      f"request(s):\n{self.errors[-1]}", file=sys.stderr, flush=True)
                for request_id, handle in list(self._handles.items()):
                    handle._put(exc)
                    try:
                        self.engine.abort(request_id)
                    except Exception:  # noqa: BLE001
                        pass
                self._handles.clear()
                continue
            self.steps += 1
            for out in outputs:
                handle = self._handles.get(out.request_id)
                if handle is None:
                    continue  # aborted meanwhile
                handle._put(out)
                if out.finished:
                    del self._handles[out.request_id]


# -- Requests --------------------------------------------------------------------------------
@dataclass
class ServerLimits:
    """What one request may ask for, so that no client takes the pool from the others."""

    max_body_bytes: int = 1 << 20  # larger bodies: 413
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_chat_max_tokens: int = 256  # chat requests without max_tokens (capped by the context)
    max_concurrent: int = 64  # requests in flight, streaming or not; more: 429
    max_stop: int = 4  # stop strings per request (as OpenAI)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code


def _models() -> tuple[Any, Any]:
    """pydantic models of the two request bodies (built on first use: pydantic is slow to import)."""
    from pydantic import BaseModel, ConfigDict, Field

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        include_usage: bool = False

    class Common(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        model: str
        max_tokens: int | None = None
        temperature: float | None = None
        top_p: float | None = None
        n: int | None = None
        stream: bool | None = False
        stream_options: Options | None = None
        stop: str | list[str] | None = None
        seed: int | None = None
        presence_penalty: float | None = None
        frequency_penalty: float | None = None
        logit_bias: dict[str, float] | None = None
        user: str | None = None
        # vLLM's extras
        top_k: int | None = None
        min_p: float | None = None
        repetition_penalty: float | None = None
        ignore_eos: bool | None = None
        stop_token_ids: list[int] | None = None
        return_token_ids: bool | None = None  # vLLM's: each choice also lists its token ids

    class Completion(Common):
        prompt: Union[str, list[str], list[int], list[list[int]]]
        echo: bool | None = None
        logprobs: int | None = None
        best_of: int | None = None
        suffix: str | None = None

    class TextPart(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        type: Literal["text"]
        text: str

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        role: Literal["system", "developer", "user", "assistant"]
        content: Union[str, list[TextPart]]
        name: str | None = None

    class Chat(Common):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: int | None = None
        logprobs: bool | None = None
        top_logprobs: int | None = None

    return Completion, Chat


def _validation_message(exc: Any) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith(("function-", "union[")))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        msg = f"unknown field {loc!r} (this server accepts OpenAI's fields and vLLM's top_k, min_p, " \
              "repetition_penalty, ignore_eos, stop_token_ids)"
    elif kind == "missing":
        msg = f"missing required field {loc!r}"
    else:
        got = first.get("input")
        shown = json.dumps(got)[:80] if isinstance(got, (str, int, float, bool, list, dict, type(None))) else repr(got)[:80]
        msg = f"field {loc!r}: {first.get('msg', 'invalid value')} (got {shown})"
    return msg, (loc.split(".")[0] if loc else None)


def _params(req: Any, engine_module: Any, prompt_len: int, max_model_len: int,
            limits: ServerLimits, default_max_tokens: int) -> Any:
    """Check the request's numbers and build the engine's SamplingParams."""
    def bad(msg: str, param: str) -> APIError:
        return APIError(400, msg, param)

    if req.n not in (None, 1):
        raise bad("n > 1 is not supported by this server", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0, 0.0):
            raise bad(f"{name} is not supported (use repetition_penalty)", name)
    if req.logit_bias:
        raise bad("logit_bias is not supported", "logit_bias")
    if getattr(req, "logprobs", None) not in (None, False, 0):
        raise bad("logprobs are not supported", "logprobs")
    if getattr(req, "top_logprobs", None) not in (None, 0):
        raise bad("top_logprobs is not supported", "top_logprobs")
    if getattr(req, "echo", None):
        raise bad("echo is not supported", "echo")
    if getattr(req, "best_of", None) not in (None, 1):
        raise bad("best_of is not supported", "best_of")
    if getattr(req, "suffix", None):
        raise bad("suffix is not supported", "suffix")
    max_tokens = req.max_tokens
    if getattr(req, "max_completion_tokens", None) is not None:
        max_tokens = req.max_completion_tokens
    room = max_model_len - prompt_len
    if room < 1:
        raise bad(f"the prompt has {prompt_len} tokens and the model's context is {max_model_len} "
                  "tokens: no room for a completion", "messages" if hasattr(req, "messages") else "prompt")
    if max_tokens is None:
        max_tokens = min(default_max_tokens, room, limits.max_tokens)
    if max_tokens < 1:
        raise bad(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    if max_tokens > limits.max_tokens:
        raise bad(f"max_tokens is at most {limits.max_tokens} on this server, got {max_tokens}", "max_tokens")
    if prompt_len + max_tokens > max_model_len:
        raise bad(f"this model's context is {max_model_len} tokens, and the request asks for "
                  f"{prompt_len + max_tokens} ({prompt_len} in the prompt, {max_tokens} for the "
                  "completion): shorten the prompt or lower max_tokens", "max_tokens")
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0 <= temperature <= 2:
        raise bad(f"temperature must be in [0, 2], got {temperature}", "temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 < top_p <= 1:
        raise bad(f"top_p must be in (0, 1], got {top_p}", "top_p")
    top_k = req.top_k or 0
    if top_k < 0:
        raise bad(f"top_k must be >= 0, got {top_k}", "top_k")
    min_p = req.min_p or 0.0
    if not 0 <= min_p <= 1:
        raise bad(f"min_p must be in [0, 1], got {min_p}", "min_p")
    penalty = 1.0 if req.repetition_penalty is None else req.repetition_penalty
    if penalty < 1:
        raise bad(f"repetition_penalty must be >= 1, got {penalty}", "repetition_penalty")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop or any(not s or len(s) > 256 for s in stop):
        raise bad(f"stop: at most {limits.max_stop} non-empty strings of at most 256 characters", "stop")
    return engine_module.SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repetition_penalty=penalty, stop=stop, stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=bool(req.ignore_eos), seed=req.seed)


# -- The app ---------------------------------------------------------------------------------
def create_app(runner: EngineRunner, *, model_name: str, engine_module: Any,
               limits: ServerLimits | None = None, api_key: str | None = None) -> Any:
    """The FastAPI app serving `runner`'s engine."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    limits = limits or ServerLimits()
    engine = runner.engine
    tokenizer = engine.tokenizer
    Completion, Chat = _models()
    app = FastAPI(title="inference-katas mini engine", docs_url=None, redoc_url=None)
    app.state.runner = runner
    app.state.in_flight = 0
    created = int(time.time())

    def error(exc: APIError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message, "type": exc.type,
                                       "param": exc.param, "code": exc.code}},
                            status_code=exc.status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc: Exception) -> JSONResponse:
        return error(APIError(405, f"{request.method} is not allowed on {request.url.path}"))

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return error(APIError(401, "invalid or missing API key (send the header "
                                      "'Authorization: Bearer <key>')", code="invalid_api_key"))
        return await call_next(request)

    async def read_json(request: Request, model: Any) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise APIError(413, f"request body over {limits.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise APIError(413, f"request body over {limits.max_body_bytes} bytes")
        try:
            data = json.loads(bytes(body))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        from pydantic import ValidationError

        try:
            req = model.model_validate(data)
        except ValidationError as exc:
            msg, param = _validation_message(exc)
            raise APIError(400, msg, param) from None
        if req.model != model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves "
                           f"{model_name!r}", "model", code="model_not_found")
        return req

    def usage(out: Any) -> dict[str, Any]:
        return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": out.cached_tokens}}

    async def run(prompt_ids: list[int], req: Any, chat: bool) -> Any:
        params = _params(req, engine_module, len(prompt_ids), engine.max_model_len, limits,
                         limits.default_chat_max_tokens if chat else 16)
        if app.state.in_flight >= limits.max_concurrent:
            raise APIError(429, f"this server takes at most {limits.max_concurrent} requests at "
                           "once; retry shortly", type_="rate_limit_error")
        app.state.in_flight += 1
        try:
            handle = await runner.submit(prompt_ids, params)
        except ValueError as exc:
            app.state.in_flight -= 1
            raise APIError(400, str(exc)) from None
        except BaseException:
            app.state.in_flight -= 1
            raise
        kind = "chatcmpl" if chat else "cmpl"
        rid = f"{kind}-{handle.request_id[4:]}"
        now = int(time.time())

        async def outputs() -> AsyncIterator[Any]:
            finished = False
            try:
                while not finished:
                    item = await handle.queue.get()
                    if isinstance(item, BaseException):
                        raise APIError(500, f"the engine failed: {type(item).__name__}: {item}",
                                       type_="server_error")
                    finished = item.finished
                    yield item
            finally:
                app.state.in_flight -= 1
                if not finished:  # the client went away (or the engine failed): free its blocks
                    runner.abort(handle.request_id)

        want_ids = bool(req.return_token_ids)
        if not req.stream:
            text, ids, last = [], [], None
            async for out in outputs():
                text.append(out.new_text)
                ids += out.new_token_ids
                last = out
            content = "".join(text)
            choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
            if want_ids:
                choice["token_ids"] = ids
            if chat:
                choice["message"] = {"role": "assistant", "content": content}
            else:
                choice["text"] = content
            return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                 "created": now, "model": model_name, "choices": [choice],
                                 "usage": usage(last)})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, reason: str | None, first: bool = False,
                  ids: list[int] | None = None) -> str:
            c: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
            if want_ids:
                c["token_ids"] = ids or []
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                c["delta"] = delta
            else:
                c["text"] = text or ""
            body: dict[str, Any] = {"id": rid, "object": obj, "created": now, "model": model_name,
                                    "choices": [c]}
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        async def events() -> AsyncIterator[str]:
            if chat:
                yield chunk(None, None, first=True)
            last = None
            try:
                async for out in outputs():
                    last = out
                    if out.new_text or out.finished or want_ids:
                        yield chunk(out.new_text, out.finish_reason, ids=out.new_token_ids)
            except APIError as exc:
                yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.type}})}\n\n"
                return
            if include_usage and last is not None:
                body = {"id": rid, "object": obj, "created": now, "model": model_name,
                        "choices": [], "usage": usage(last)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": app.state.in_flight}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "inference-katas",
                                            "max_model_len": engine.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await read_json(request, Completion)
        prompt = req.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise APIError(400, "prompt: give one string or one list of token ids (batches are "
                           "not supported)", "prompt")
        if not ids:
            raise APIError(400, "the prompt is empty", "prompt")
        return await run(ids, req, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await read_json(request, Chat)
        messages = [{"role": m.role if m.role != "developer" else "system",
                     "content": m.content if isinstance(m.content, str)
                     else "".join(p.text for p in m.content)} for m in req.messages]
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - a template that refuses these messages
            raise APIError(400, f"the chat template refused these messages: {exc}", "messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return await run(ids, req, chat=True)

    return app


# -- Running it ------------------------------------------------------------------------------
class ServerThread:
    """uvicorn serving `app` on host:port (0: a free port) in a background thread (tests,
    the load test)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                     access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="kata16-http", daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


USAGE_EPILOG = """examples:
  python3 kata.py serve                                your engine, SmolLM2-135M-Instruct, CPU
  python3 kata.py serve --use-ref 04,07                our attention and allocator beside yours
  python3 kata.py serve --impl reference --device cuda our engine on a GPU
then: curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi!"}]}'
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 kata.py serve", description="Kata 16's engine behind an OpenAI-compatible API.",
        epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a Hugging Face LLaMA folder (default: "
                        "SmolLM2-135M-Instruct, converted on first use)")
    parser.add_argument("--model-name", default=None, help="the name clients ask for (default: "
                        "the folder's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--impl", default=None, help="whose modules: stubs (default), reference, or a folder")
    parser.add_argument("--use-ref", default=None, metavar="NN[,MM]",
                        help="our reference for these katas (e.g. 04,07; 16 for our engine; all)")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-blocks", type=int, default=None,
                        help="KV blocks for running requests (default: 4096 on CUDA, 1024 on CPU)")
    parser.add_argument("--num-cache-blocks", type=int, default=None,
                        help="further KV blocks for the prefix cache (default: a quarter of --num-blocks)")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask")
    parser.add_argument("--max-concurrent", type=int, default=64, help="requests in flight; more get 429")
    parser.add_argument("--cuda-graphs", action="store_true", help="capture decode steps in CUDA graphs")
    args = parser.parse_args(argv)

    from harness import compose
    from harness.impl import ENV_VAR, resolve_impl_dir

    try:
        os.environ[ENV_VAR] = str(resolve_impl_dir(args.impl))
        compose.set_use_ref(args.use_ref)
    except (ValueError, NotADirectoryError) as exc:
        parser.error(str(exc))
    if not _is_loopback(args.host) and not args.api_key:
        print(f"kata serve: WARNING: binding to {args.host} without an API key: anyone who can reach "
              f"this address can use the server. Pass --api-key KEY (or set ${API_KEY_ENV}).",
              file=sys.stderr, flush=True)

    import torch

    if args.model is None:
        from harness.smollm2 import ensure_smollm2

        model_dir = ensure_smollm2()
    else:
        model_dir = Path(args.model)
    name = args.model_name or Path(model_dir).name
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    num_blocks = args.num_blocks or (4096 if args.device.startswith("cuda") else 1024)
    cache_blocks = num_blocks // 4 if args.num_cache_blocks is None else args.num_cache_blocks
    engine_path = compose.source_of("mini_engine")
    if engine_path.is_relative_to(compose.ROOT):
        engine_path = engine_path.relative_to(compose.ROOT)
    print("kata serve: modules:", *compose.describe(), f"kata 16 mini_engine: {engine_path}",
          sep="\n  ", flush=True)
    me = compose.kata("mini_engine")
    try:
        engine = me.Engine(model_dir, me.EngineConfig(
            block_size=args.block_size, num_blocks=num_blocks, num_cache_blocks=cache_blocks,
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
            dtype=dtype, device=args.device, cuda_graphs=args.cuda_graphs))
    except (NotImplementedError, compose.KataNotDone) as exc:
        print(f"kata serve: the engine is not ready: {exc}", file=sys.stderr)
        return 1
    runner = EngineRunner(engine).start()
    app = create_app(runner, model_name=name, engine_module=me,
                     limits=ServerLimits(max_tokens=args.max_tokens, max_concurrent=args.max_concurrent),
                     api_key=args.api_key)
    import uvicorn

    print(f"kata serve: {name} on http://{args.host}:{args.port}/v1 ({args.device}, {dtype}); "
          "Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    runner.stop()
    return 0
