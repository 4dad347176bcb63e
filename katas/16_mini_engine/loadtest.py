"""A bounded load test for an OpenAI-compatible server: a fixed number of streaming
completions, a fixed number at once, a time limit; prints TTFT and TPOT.

    python3 kata.py serve --impl reference &            # in another terminal
    python katas/16_mini_engine/loadtest.py --requests 64 --concurrency 16

TTFT: time from sending the request to its first token; TPOT: (time of the last token -
time of the first) / (tokens - 1). Every request asks for exactly `max_tokens` tokens
(ignore_eos), greedy, with a prompt of `prompt_tokens` random token ids (seeded).
"""
from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadReport:
    requests: int
    completed: int
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)  # seconds, one per completed request
    tpot: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        s = sorted(values)
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    def summary(self) -> str:
        ms = 1000.0
        return (f"{self.completed}/{self.requests} requests in {self.wall:.2f} s, "
                f"{self.tokens / self.wall if self.wall else 0:.1f} tokens/s; "
                f"TTFT p50 {self._pct(self.ttft, .5) * ms:.1f} ms p95 {self._pct(self.ttft, .95) * ms:.1f} ms; "
                f"TPOT p50 {self._pct(self.tpot, .5) * ms:.1f} ms p95 {self._pct(self.tpot, .95) * ms:.1f} ms"
                + (f"; {len(self.errors)} errors, first: {self.errors[0]}" if self.errors else ""))


def run_load(base_url: str, model: str, *, requests: int = 32, concurrency: int = 8,
             prompt_tokens: int = 16, max_tokens: int = 16, vocab: int = 300,
             api_key: str | None = None, timeout: float = 120.0, seed: int = 0) -> LoadReport:
    """Send `requests` streaming completions, `concurrency` at a time; each must finish
    within `timeout` seconds of the start."""
    import openai

    client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key or "none",
                           timeout=timeout, max_retries=0)
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(prompt_tokens)] for _ in range(requests)]
    report = LoadReport(requests=requests, completed=0)
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def one(prompt: list[int]) -> None:
        start = time.monotonic()
        times: list[float] = []
        try:
            stream = client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
                extra_body={"ignore_eos": True, "return_token_ids": True})
            for chunk in stream:
                extra = (chunk.choices[0].model_extra or {}) if chunk.choices else {}
                ids = extra.get("token_ids") or []
                times += [time.monotonic()] * len(ids)
                if time.monotonic() > deadline:
                    stream.close()
                    raise TimeoutError(f"over the {timeout} s limit")
            if len(times) != max_tokens:
                raise RuntimeError(f"got {len(times)} tokens, asked for {max_tokens}")
        except Exception as exc:  # noqa: BLE001 - counted and reported
            with lock:
                report.errors.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            report.completed += 1
            report.tokens += len(times)
            report.ttft.append(times[0] - start)
            if len(times) > 1:
                report.tpot.append((times[-1] - times[0]) / (len(times) - 1))

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, prompts))
    report.wall = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="default: the server's first model")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--api-key", default=None)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    model = args.model
    if model is None:
        import openai

        model = openai.OpenAI(base_url=args.url + "/v1", api_key=args.api_key or "none").models.list().data[0].id
    report = run_load(args.url, model, requests=args.requests, concurrency=args.concurrency,
                      prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
                      api_key=args.api_key, timeout=args.timeout)
    print(report.summary())
    return 0 if report.completed == report.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
