"""Kata 16, Task 5: your engine behind our OpenAI-compatible server (harness/serve.py),
checked with a real client (the `openai` package) over loopback.

The server runs in this process (uvicorn in a thread, a free port) on the tiny test model.
Expected outputs come from transformers in float64 (tiny.Oracle); a different greedy token
is accepted only at a genuine near-tie (see the README's "batch invariance").
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import load_kata_file, load_kata_module

m = load_kata_module("mini_engine")
loadtest = load_kata_file(Path(__file__).with_name("loadtest.py"), "kata16_loadtest")

MODEL = "tiny"


def rand_ids(n: int, seed: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 360, (n,), generator=g).tolist()


class Server:
    """The engine, its runner thread and uvicorn, for one test module."""

    def __init__(self, tiny_dir: Path, tokenizer: Any) -> None:
        from harness.serve import EngineRunner, ServerThread, ServerLimits, create_app

        self.engine = m.Engine(tiny_dir, m.EngineConfig(
            block_size=4, num_blocks=160, num_cache_blocks=32, max_num_seqs=16,
            max_num_batched_tokens=64), tokenizer=tokenizer)
        self.runner = EngineRunner(self.engine).start()
        self.http = ServerThread(create_app(self.runner, model_name=MODEL, engine_module=m,
                                            limits=ServerLimits(max_tokens=128))).start()
        self.extra: list[Any] = []

    def app(self, **kw: Any) -> Any:
        """Another app on the same engine (an API key, other limits), on its own port."""
        from harness.serve import ServerLimits, ServerThread, create_app

        limits = ServerLimits(**kw.pop("limits", {}))
        http_ = ServerThread(create_app(self.runner, model_name=MODEL, engine_module=m,
                                        limits=limits, **kw)).start()
        self.extra.append(http_)
        return http_

    def client(self, http_: Any = None, api_key: str = "none") -> Any:
        import openai

        return openai.OpenAI(base_url=(http_ or self.http).url + "/v1", api_key=api_key,
                             timeout=60, max_retries=0)

    def wait_idle(self, what: str, timeout: float = 30.0) -> None:
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while self.runner.in_flight() or self.engine.has_unfinished():
            assert time.monotonic() < deadline, f"{what}: the engine is still busy after {timeout} s"
            time.sleep(0.02)
        assert not self.runner.errors, f"{what}: engine.step() raised:\n{self.runner.errors[0]}"

    def assert_pool_back(self, what: str) -> None:
        __tracebackhide__ = True
        self.wait_idle(what)
        e = self.engine
        assert e.num_free_blocks + e.num_cached_blocks == e.num_total_blocks, (
            f"{what}: idle, yet {e.num_total_blocks - e.num_free_blocks - e.num_cached_blocks} of "
            f"{e.num_total_blocks} blocks are neither free ({e.num_free_blocks}) nor prefix cache "
            f"({e.num_cached_blocks}): blocks leaked")

    def stop(self) -> None:
        for h in self.extra:
            h.stop()
        self.http.stop()
        self.runner.stop()

    def raw(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http.port, timeout=30)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(data)
        except json.JSONDecodeError:
            return resp.status, {"raw": data.decode(errors="replace")}


class _Lazy:
    """Builds the server at its first use inside a check, so that an engine that is still
    a stub gives every check its TODO line (a module-scoped fixture that raised would not)."""

    def __init__(self, tiny_dir: Path, tokenizer: Any) -> None:
        self.args = (tiny_dir, tokenizer)
        self.server: Server | None = None

    def get(self) -> Server:
        if self.server is None:
            self.server = Server(*self.args)
        return self.server


@pytest.fixture(scope="module")
def servers(tiny_dir: Path, tokenizer: Any) -> Iterator[_Lazy]:
    """Each check starts with `server = servers.get()`: the engine is built inside the check
    (a learner's NotImplementedError raised in a fixture would upset pytest's fixture cache)."""
    lazy = _Lazy(tiny_dir, tokenizer)
    yield lazy
    if lazy.server is not None:
        lazy.server.stop()


def ids_of(choice: Any) -> list[int]:
    return list((choice.model_extra or {}).get("token_ids") or [])


GREEDY = {"ignore_eos": True, "return_token_ids": True}


class TestTask5Serve:
    def test_health_and_models(self, servers: _Lazy) -> None:
        server = servers.get()
        status, body = server.raw("GET", "/health")
        assert status == 200, f"GET /health: expected 200, got {status} {body}"
        models = server.client().models.list()
        assert [x.id for x in models.data] == [MODEL], f"/v1/models lists the served model, got {models}"

    def test_completion_equals_transformers_and_kata06(self, servers: _Lazy, oracle: Any, tiny_dir: Path) -> None:
        server = servers.get()
        prompt = rand_ids(11, 1)
        r = server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                               extra_body=GREEDY)
        got = ids_of(r.choices[0])
        oracle.check_greedy(got, prompt, n=12, what="POST /v1/completions, greedy")
        from harness.compose import kata

        T = kata("transformer")
        theirs = list(T.generate(T.Transformer.from_pretrained(tiny_dir), prompt, 12))
        oracle.check_agree(got, theirs, prompt, what="the server's greedy output against kata 06's generate")
        text = r.choices[0].text
        assert text == server.engine.tokenizer.decode(got, skip_special_tokens=True), (
            f"choices[0].text must be the decoded tokens {got}, got {text!r}")
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 12, 23), (
            f"usage: 11 prompt + 12 completion tokens, got {r.usage}")
        assert r.choices[0].finish_reason == "length", f"max_tokens reached: 'length', got {r.choices[0].finish_reason!r}"

    def test_text_prompt_and_chat_template(self, servers: _Lazy, oracle: Any, tokenizer: Any) -> None:
        server = servers.get()
        c = server.client()
        prompt = "The quick brown fox"
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, extra_body=GREEDY)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        oracle.check_greedy(ids_of(r.choices[0]), ids, n=8, what=f"completion of the text {prompt!r}")
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, world!"}]
        r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0, extra_body=GREEDY)
        chat_ids = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                             add_special_tokens=False)["input_ids"]
        got = ids_of(r.choices[0])
        oracle.check_greedy(got, chat_ids, n=8, what="chat completion (the prompt is the model's chat template)")
        assert r.usage.prompt_tokens == len(chat_ids), (
            f"chat usage.prompt_tokens: the templated prompt has {len(chat_ids)} tokens, got {r.usage.prompt_tokens}")
        assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == tokenizer.decode(
            got, skip_special_tokens=True), f"chat message: the decoded tokens, got {r.choices[0].message}"

    def test_stream_equals_non_stream(self, servers: _Lazy) -> None:
        server = servers.get()
        c = server.client()
        prompt = rand_ids(9, 2)
        whole = c.completions.create(model=MODEL, prompt=prompt, max_tokens=14, temperature=0, extra_body=GREEDY)
        chunks = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=14, temperature=0, stream=True,
                                           stream_options={"include_usage": True}, extra_body=GREEDY))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        ids = [t for ch in chunks if ch.choices for t in ids_of(ch.choices[0])]
        assert ids == ids_of(whole.choices[0]) and text == whole.choices[0].text, (
            f"stream=True must send the same tokens and text as stream=False: {ids} {text!r} vs "
            f"{ids_of(whole.choices[0])} {whole.choices[0].text!r}")
        reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert reasons == ["length"], f"one chunk carries finish_reason ('length'), got {reasons}"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 14, (
            f"stream_options.include_usage: a last chunk with usage (14 completion tokens), got {chunks[-1]}")
        chat = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=6, temperature=0, stream=True, extra_body=GREEDY))
        assert chat[0].choices[0].delta.role == "assistant", "the first chat chunk's delta names the role"

    def test_sixteen_concurrent_streams(self, servers: _Lazy, oracle: Any) -> None:
        """16 clients at once, streaming: each gets its own unbatched greedy output."""
        server = servers.get()
        prompts = [rand_ids(4 + (7 * i) % 23, 100 + i) for i in range(16)]
        got: dict[int, list[int]] = {}
        errors: list[str] = []
        start = threading.Barrier(16)

        def client(i: int) -> None:
            try:
                c = server.client()
                start.wait()
                ids = []
                for ch in c.completions.create(model=MODEL, prompt=prompts[i], max_tokens=16, temperature=0,
                                               stream=True, extra_body=GREEDY):
                    if ch.choices:
                        ids += ids_of(ch.choices[0])
                got[i] = ids
            except Exception as exc:  # noqa: BLE001
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")

        peak = server.runner.peak_in_flight
        server.runner.peak_in_flight = 0
        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, f"16 concurrent streams: {errors[0]}"
        for i, p in enumerate(prompts):
            oracle.check_greedy(got[i], p, n=16, what=f"stream {i} of 16 concurrent (prompt of {len(p)} tokens)")
        assert server.runner.peak_in_flight >= 8, (
            f"16 clients at once, yet at most {server.runner.peak_in_flight} requests were in the engine together")
        server.runner.peak_in_flight = max(peak, server.runner.peak_in_flight)
        server.assert_pool_back("after 16 concurrent streams")

    def test_stop_sequences_and_cached_tokens(self, servers: _Lazy, oracle: Any, tokenizer: Any) -> None:
        server = servers.get()
        c = server.client()
        prompt = rand_ids(10, 3)
        full = tokenizer.decode(oracle.greedy(prompt, 16), skip_special_tokens=True)
        stop = full[6:9]
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop],
                                 extra_body={"ignore_eos": True})
        assert r.choices[0].text == full[:full.find(stop)] and r.choices[0].finish_reason == "stop", (
            f"stop={[stop]} in {full!r}: text {full[:full.find(stop)]!r} and 'stop' expected, got "
            f"{r.choices[0].text!r} {r.choices[0].finish_reason!r}")
        long_prompt = rand_ids(37, 4)
        first = c.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4, temperature=0, extra_body=GREEDY)
        again = c.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4, temperature=0, extra_body=GREEDY)
        cached = again.usage.prompt_tokens_details.cached_tokens if again.usage.prompt_tokens_details else None
        assert cached == 36, (f"the same 37-token prompt twice: usage.prompt_tokens_details.cached_tokens "
                              f"must be 36 (9 whole blocks of 4), got {cached}")
        assert ids_of(again.choices[0]) == ids_of(first.choices[0]), "a prefix-cache hit must not change the output"

    def test_seeded_sampling_is_reproducible(self, servers: _Lazy) -> None:
        server = servers.get()
        c = server.client()
        kw = dict(model=MODEL, prompt=rand_ids(8, 5), max_tokens=10, temperature=1.2, top_p=0.95, seed=1234,
                  extra_body={"ignore_eos": True, "return_token_ids": True, "top_k": 50})
        a, b = (ids_of(c.completions.create(**kw).choices[0]) for _ in range(2))
        assert a == b and len(a) == 10, f"the same seed twice must give the same tokens: {a} vs {b}"

    def test_disconnect_frees_the_blocks(self, servers: _Lazy) -> None:
        server = servers.get()
        before = server.runner.aborts
        # The server notices a closed connection only when it next sends, on its event loop;
        # on a busy machine the tiny model could otherwise run all 120 tokens first, and the
        # request would end as finished, not aborted. So each engine step waits 50 ms until the
        # abort comes in (6 s over the request's length): the race is taken out, not the check.
        engine = server.runner.engine
        step = engine.step

        def slow_step() -> Any:
            if server.runner.aborts == before:
                time.sleep(0.05)
            return step()

        engine.step = slow_step
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.http.port, timeout=30)
            conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"}, body=json.dumps(
                {"model": MODEL, "prompt": rand_ids(20, 6), "max_tokens": 120, "stream": True, "ignore_eos": True}))
            resp = conn.getresponse()
            assert resp.status == 200, f"a streaming request: expected 200, got {resp.status}"
            events = 0
            while events < 3:
                if resp.fp.readline().startswith(b"data:"):
                    events += 1
            conn.sock.shutdown(2)
            conn.close()
            deadline = time.monotonic() + 20
            while server.runner.aborts == before and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            del engine.step  # the engine's own method again
        assert server.runner.aborts > before, "the client closed its connection mid-stream, but the request was not aborted"
        server.assert_pool_back("after a client disconnected mid-stream")

    def test_bad_requests_get_a_clear_4xx(self, servers: _Lazy) -> None:
        server = servers.get()
        good = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
        cases = [
            ("invalid JSON", b'{"model": "tiny", "prompt": ', 400, "JSON"),
            ("max_tokens of the wrong type", {**good, "max_tokens": "ten"}, 400, "max_tokens"),
            ("temperature of the wrong type", {**good, "temperature": "hot"}, 400, "temperature"),
            ("an unknown field", {**good, "max_tokenz": 5}, 400, "max_tokenz"),
            ("max_tokens < 1", {**good, "max_tokens": 0}, 400, "max_tokens"),
            ("max_tokens over the server's limit", {**good, "max_tokens": 100000}, 400, "max_tokens"),
            ("a prompt over the context", {**good, "prompt": rand_ids(300, 7)}, 400, "context"),
            ("a missing prompt", {"model": MODEL}, 400, "prompt"),
            ("an unknown model", {**good, "model": "gpt-9"}, 404, "gpt-9"),
            ("n > 1", {**good, "n": 2}, 400, "n"),
            ("a body over the size limit", {**good, "prompt": "x" * (2 << 20)}, 413, "bytes"),
        ]
        for what, body, status, word in cases:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            got, reply = server.raw("POST", "/v1/completions", data)
            message = (reply.get("error") or {}).get("message", "") if isinstance(reply, dict) else ""
            assert got == status and word.lower() in message.lower(), (
                f"{what}: expected HTTP {status} with an error message naming {word!r}, got {got}: {reply}")
        got, reply = server.raw("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]}).encode())
        assert got == 400, f"a chat message whose content is a number: expected 400, got {got} {reply}"
        r = server.client().completions.create(**good)
        assert r.choices[0].finish_reason in ("length", "stop"), "after the bad requests the server still serves"

    def test_api_key(self, servers: _Lazy) -> None:
        server = servers.get()
        import openai

        locked = server.app(api_key="sesame")
        with pytest.raises(openai.AuthenticationError):
            server.client(locked, api_key="wrong").models.list()
        r = server.client(locked, api_key="sesame").completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert r.usage.completion_tokens >= 1, "with the right key the request is served"

    def test_concurrent_requests_are_bounded(self, servers: _Lazy) -> None:
        server = servers.get()
        import openai

        small = server.app(limits={"max_concurrent": 2})
        c = server.client(small)
        streams = [c.completions.create(model=MODEL, prompt=rand_ids(6, 8 + i), max_tokens=100, stream=True,
                                        extra_body={"ignore_eos": True}) for i in range(2)]
        try:
            for s in streams:
                next(iter(s))  # both are in flight
            with pytest.raises(openai.RateLimitError):
                c.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        finally:
            for s in streams:
                s.close()
        server.assert_pool_back("after closing two streams")

    def test_bounded_load(self, servers: _Lazy) -> None:
        """24 streaming requests, 8 at a time, 16 tokens each, within 60 s: prints TTFT/TPOT,
        and afterwards every block is back."""
        server = servers.get()
        report = loadtest.run_load(server.http.url, MODEL, requests=24, concurrency=8, prompt_tokens=12,
                                   max_tokens=16, timeout=60)
        print(f"\nkata 16 load test (tiny model, CPU): {report.summary()}")
        assert report.completed == 24, f"load test: {report.summary()}"
        server.assert_pool_back("after the load test")

    def test_use_ref_chooses_our_modules(self, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
        """`--use-ref 04,07` (pytest and `kata.py serve`): our modules for those katas, yours
        for the others (harness/compose.py)."""
        import os

        from harness import compose
        from harness.impl import impl_dir
        from harness.katas import ROOT

        given = request.config.getoption("--use-ref")
        if given is not None:
            assert compose.use_ref() == compose.parse_use_ref(given), (
                f"pytest --use-ref {given}: KATA_USE_REF should say {sorted(compose.parse_use_ref(given))}, "
                f"it says {os.environ.get(compose.USE_REF_ENV)!r}")
        assert compose.parse_use_ref("4, 07") == {"04", "07"} and compose.parse_use_ref("all") >= {"02", "16"}
        with pytest.raises(ValueError):
            compose.parse_use_ref("04,99")
        monkeypatch.setenv(compose.USE_REF_ENV, "04,07")
        assert compose.source_of("attention") == ROOT / "reference" / "attention.py"
        assert compose.source_of("paged_allocator") == ROOT / "reference" / "paged_allocator.py"
        mine = impl_dir() / "sampling.py"
        assert compose.source_of("sampling") == (mine if mine.is_file() else ROOT / "reference" / "sampling.py")
        from harness.serve import main

        with pytest.raises(SystemExit):
            main(["--use-ref", "04,99"])
