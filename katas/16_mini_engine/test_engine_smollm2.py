"""Kata 16 on the real model: SmolLM2-135M-Instruct served by your engine (float32, CPU),
against transformers in float64 and kata 06's generate, through the server and an openai
client.

Marked `slow` and skipped unless asked for: `pytest katas/16 -m slow` (a few minutes on a
laptop CPU; the folder comes from harness/smollm2.py, converted once into .kata_models/).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import load_kata_file, load_kata_module

m = load_kata_module("mini_engine")
tiny = load_kata_file(Path(__file__).with_name("tiny.py"), "kata16_tiny")

pytestmark = pytest.mark.slow
MODEL = "smollm2"
QUESTIONS = ["Name the planets of the solar system.", "What is a KV cache?", "Write a haiku about GPUs.",
             "How many legs does a spider have?", "Say hello in French.", "What is 12 times 12?"]


@pytest.fixture(scope="module", autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.option.markexpr or "") and not os.environ.get("KATA_SLOW"):
        pytest.skip("SmolLM2 checks are slow: run them with `pytest katas/16 -m slow`")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from harness.smollm2 import ensure_smollm2, gguf_path

    try:
        gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return ensure_smollm2()


@pytest.fixture(scope="module")
def big_oracle(smollm2: Path) -> Any:
    return tiny.Oracle(smollm2)


class _Lazy:
    def __init__(self, folder: Path) -> None:
        self.folder, self.server = folder, None

    def get(self) -> Any:
        if self.server is None:
            from harness.serve import EngineRunner, ServerThread, create_app

            engine = m.Engine(self.folder, m.EngineConfig(block_size=16, num_blocks=256, num_cache_blocks=64,
                                                           max_num_seqs=8, max_num_batched_tokens=256))
            runner = EngineRunner(engine).start()
            http_ = ServerThread(create_app(runner, model_name=MODEL, engine_module=m)).start()
            self.server = (engine, runner, http_)
        return self.server


@pytest.fixture(scope="module")
def servers(smollm2: Path) -> Iterator[_Lazy]:
    lazy = _Lazy(smollm2)
    yield lazy
    if lazy.server is not None:
        lazy.server[2].stop()
        lazy.server[1].stop()


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def client(http_: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=http_.url + "/v1", api_key="none", timeout=600, max_retries=0)


class TestTask5Serve:
    def test_smollm2_chat_equals_transformers_and_kata06(self, servers: _Lazy, big_oracle: Any,
                                                         smollm2: Path) -> None:
        engine, runner, http_ = servers.get()
        r = client(http_).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=24, temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True})
        got = list(r.choices[0].model_extra["token_ids"])
        prompt = chat_ids(engine.tokenizer, QUESTIONS[0])
        big_oracle.check_greedy(got, prompt, n=24, what="SmolLM2 chat, greedy, through the server")
        from harness.compose import kata

        T = kata("transformer")
        theirs = list(T.generate(T.Transformer.from_pretrained(smollm2), prompt, 24))
        big_oracle.check_agree(got, theirs, prompt, what="SmolLM2: the server against kata 06's generate")
        print(f"\nSmolLM2: {r.choices[0].message.content!r}")

    def test_smollm2_concurrent_streams(self, servers: _Lazy, big_oracle: Any) -> None:
        engine, runner, http_ = servers.get()
        got: dict[int, list[int]] = {}
        errors: list[str] = []

        def one(i: int) -> None:
            try:
                ids = []
                for ch in client(http_).chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": QUESTIONS[i]}], max_tokens=16,
                        temperature=0, stream=True, extra_body={"ignore_eos": True, "return_token_ids": True}):
                    if ch.choices:
                        ids += (ch.choices[0].model_extra or {}).get("token_ids") or []
                got[i] = ids
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(QUESTIONS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors, f"SmolLM2, {len(QUESTIONS)} concurrent streams: {errors[0]}"
        for i, q in enumerate(QUESTIONS):
            big_oracle.check_greedy(got[i], chat_ids(engine.tokenizer, q), n=16,
                                    what=f"SmolLM2 stream {i} of {len(QUESTIONS)} ({q!r})")
