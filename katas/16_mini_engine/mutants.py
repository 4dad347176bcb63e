"""Planted bugs in reference/mini_engine.py that kata 16's checks must catch."""
from harness import Mutant

MUTANTS = [
    Mutant(
        name="positions_restart_each_step",
        bug="positions counted from 0 in every step, not offset by the tokens already in the cache",
        find="            pos += range(start, start + n)\n",
        replace="            pos += range(n)\n",
    ),
    Mutant(
        name="chunk_not_causal",
        bug="a prefill chunk attends to all of its tokens, later ones included (no causal mask)",
        find='o = kata("attention").attention(qs, k, v, causal=True)',
        replace='o = kata("attention").attention(qs, k, v, causal=False)',
    ),
    Mutant(
        name="chunk_ignores_cached_tokens",
        bug="a prefill chunk attends only to its own tokens, not to the sequence's cached ones",
        find="                pos = torch.arange(context[b], device=dev)\n",
        replace="                pos = torch.arange(context[b] - n, context[b], device=dev)\n",
    ),
    Mutant(
        name="logits_of_first_token",
        bug="each sequence's logits taken at its first token in the batch instead of its last",
        find="last = torch.tensor(batch.query_lens, device=self.device).cumsum(0) - 1",
        replace="last = torch.tensor(batch.query_lens, device=self.device).cumsum(0) - "
                "torch.tensor(batch.query_lens, device=self.device)",
    ),
    Mutant(
        name="sampling_params_of_another_request",
        bug="every row of a sampling group uses the first row's parameters",
        find="            ps = [reqs[i].params for i in rows]\n",
        replace="            ps = [reqs[rows[0]].params for i in rows]\n",
    ),
    Mutant(
        name="tokens_to_the_wrong_requests",
        bug="the sampled tokens are handed to the requests in the wrong order",
        find="                for req, token in zip(emitting, tokens):\n",
        replace="                for req, token in zip(emitting, reversed(tokens)):\n",
    ),
    Mutant(
        name="abort_keeps_the_blocks",
        bug="abort marks the request done but never frees its blocks",
        find="        if req is None or req.done:\n            return\n        self._retire(req)\n",
        replace="        if req is None or req.done:\n            return\n        req.done = True\n",
    ),
    Mutant(
        name="preempted_request_keeps_its_progress",
        bug="after a preemption the engine still counts the dropped tokens as computed",
        find="                self.kv.preempt(rid)\n                req.computed = 0\n",
        replace="                self.kv.preempt(rid)\n",
    ),
    Mutant(
        name="stop_string_included",
        bug="the text sent goes on past the stop string (it is included in the output)",
        find="        return text[:min(hits)], True\n",
        replace="        return text, True\n",
    ),
    Mutant(
        name="eos_ignored",
        bug="the model's eos token does not end the request unless ignore_eos is set (inverted test)",
        find="(token in self.eos_token_ids and not p.ignore_eos)",
        replace="(token in self.eos_token_ids and p.ignore_eos)",
    ),
    Mutant(
        name="completion_tokens_off_by_one",
        bug="usage counts one completion token too few",
        find="completion_tokens=len(req.generated),",
        replace="completion_tokens=len(req.generated) - 1,",
    ),
    Mutant(
        name="prefix_blocks_after_own_blocks",
        bug="a cache hit's block table lists the request's own blocks before the cached prefix's",
        find="        return self._cached[request_id][1] + own\n",
        replace="        return own + self._cached[request_id][1]\n",
    ),
    Mutant(
        name="prefix_hit_token_by_token",
        bug="a cached prefix is reused without checking that each block is one physical block "
            "holding exactly those tokens (a mid-block divergence reuses another sequence's slots)",
        find="                if first % bs or values[j:j + bs] != list(range(first, first + bs)):\n",
        replace="                if False:\n",
    ),
    Mutant(
        name="eviction_never_frees",
        bug="evicting a finished request's cached blocks forgets to give them back to the allocator",
        find="                    del self._kept[seq]\n                    self.allocator.free(seq)\n",
        replace="                    del self._kept[seq]\n",
    ),
    Mutant(
        name="finished_blocks_leak",
        bug="a finished request's blocks that do not stay as prefix cache are never freed",
        find="        if own and not kept:\n            self.allocator.free(seq)\n",
        replace="        if own and kept:\n            self.allocator.free(seq)\n",
    ),
    Mutant(
        name="top_p_and_min_p_ignored",
        bug="sample() is called with top_p=1 and min_p=0 for every row: the requests' own "
            "top_p and min_p are dropped",
        find="                top_p=torch.tensor([p.top_p for p in ps], device=dev),\n"
             "                min_p=torch.tensor([p.min_p for p in ps], device=dev),\n",
        replace="                top_p=torch.ones(len(ps), device=dev),\n"
                "                min_p=torch.zeros(len(ps), device=dev),\n",
    ),
    Mutant(
        name="repetition_penalty_on_output_only",
        bug="the repetition penalty looks at the generated tokens only, not at the prompt's",
        find="            seen = [r.tokens for r in reqs]\n",
        replace="            seen = [r.generated or [-1] for r in reqs]\n",
    ),
    Mutant(
        name="partial_stop_string_sent",
        bug="text that may be the start of a stop string is sent at once instead of held back",
        find="        visible, hit = find_stop(req.text, p.stop)\n",
        replace="        visible, hit = find_stop(req.text, p.stop)\n        if not hit:\n"
                "            visible = req.text\n",
    ),
    Mutant(
        name="stop_string_searched_in_newest_text_only",
        bug="stop strings are looked for in the newest token's text only: one split across two "
            "tokens is missed",
        find="        self._detokenize(req, final=reason is not None)\n"
             "        visible, hit = find_stop(req.text, p.stop)\n",
        replace="        old = len(req.text)\n        self._detokenize(req, final=reason is not None)\n"
                "        visible, hit = find_stop(req.text[old:], p.stop)\n"
                "        visible = req.text[:old] + visible\n",
    ),
]
