"""Planted bugs for kata 02: classic sampler mistakes, as edits of reference/sampling.py."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    # -- temperature ------------------------------------------------------------------
    Mutant(
        "temperature_multiplies",
        "multiplies the logits by the temperature instead of dividing",
        find="z = logits / torch.where(greedy, torch.ones_like(t), t)",
        replace="z = logits * torch.where(greedy, torch.ones_like(t), t)",
    ),
    Mutant(
        "greedy_keeps_first_argmax_only",
        "temperature 0 puts all mass on the first argmax instead of sharing it among tied maxima",
        find="is_max = logits == logits.amax(dim=-1, keepdim=True)",
        replace="is_max = torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).bool()",
    ),
    Mutant(
        "softmax_without_max_subtraction",
        "exponentiates the raw scaled logits: exp overflows for large logits and gives NaN",
        find="return torch.softmax(z, dim=-1)  # subtracts the row max: no overflow",
        replace="return z.exp() / z.exp().sum(dim=-1, keepdim=True)",
    ),
    Mutant(
        "divides_logits_in_place",
        "scales the caller's logits in place (x.div_(t)) instead of a copy",
        find="z = logits / torch.where(greedy, torch.ones_like(t), t)",
        replace="z = logits.div_(torch.where(greedy, torch.ones_like(t), t))",
    ),
    # -- top-k ------------------------------------------------------------------------
    Mutant(
        "top_k_breaks_ties_by_index",
        "keeps exactly the first k slots of a sorted list, so ties at the boundary depend on token order",
        find="    kth = ordered.gather(-1, k - 1)  # (B, 1)\n"
             "    return _keep_and_renormalise(probs, probs >= kth)",
        replace="    rank = probs.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)\n"
                "    return _keep_and_renormalise(probs, rank < k)",
    ),
    Mutant(
        "top_k_off_by_one",
        "compares with the (k+1)-th largest probability (index k instead of k - 1)",
        find="kth = ordered.gather(-1, k - 1)",
        replace="kth = ordered.gather(-1, k.clamp(max=V - 1))",
    ),
    Mutant(
        "top_k_zero_keeps_one",
        "treats top_k=0 as k=1 (greedy) instead of 'no limit'",
        find="k = torch.where((k <= 0) | (k > V), V, k).long()",
        replace="k = torch.where(k > V, V, k).clamp(min=1).long()",
    ),
    Mutant(
        "top_k_not_renormalised",
        "top-k zeroes tokens without renormalising, so top-p measures mass in the unnormalised rest",
        find="    return _keep_and_renormalise(probs, probs >= kth)",
        replace="    return torch.where(probs >= kth, probs, torch.zeros_like(probs))",
    ),
    # -- top-p ------------------------------------------------------------------------
    Mutant(
        "top_p_drops_crossing_token",
        "tests the cumulative mass INCLUDING the token (cumsum < p), dropping the token that crosses p",
        find="n_keep = (before < p).sum(dim=-1, keepdim=True)",
        replace="n_keep = (cum < p).sum(dim=-1, keepdim=True).clamp(min=1)",
    ),
    Mutant(
        "top_p_breaks_ties_by_slot",
        "keeps the first n slots of the sorted list, splitting a tie group at the crossing",
        find="keep = (probs >= smallest_kept) | (p >= 1.0)",
        replace="keep = (probs.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1) < n_keep)"
                " | (p >= 1.0)",
    ),
    Mutant(
        "top_p_one_drops_tail",
        "top_p=1.0 still filters, so tokens whose mass-ahead rounds to 1.0 in float32 are lost",
        find="keep = (probs >= smallest_kept) | (p >= 1.0)",
        replace="keep = probs >= smallest_kept",
    ),
    # -- min-p ------------------------------------------------------------------------
    Mutant(
        "min_p_relative_to_sum",
        "min-p threshold is min_p times the row's total mass (an absolute threshold), not its max",
        find="probs >= min_p * probs.amax(dim=-1, keepdim=True)",
        replace="probs >= min_p * probs.sum(dim=-1, keepdim=True)",
    ),
    # -- order, per-row parameters, validation ----------------------------------------
    Mutant(
        "top_p_before_top_k",
        "applies top-p before top-k",
        find="    probs = _top_k(probs, k)\n    probs = _top_p(probs, p)\n",
        replace="    probs = _top_p(probs, p)\n    probs = _top_k(probs, k)\n",
    ),
    Mutant(
        "min_p_before_top_p",
        "applies min-p before top-p",
        find="    probs = _top_p(probs, p)\n    probs = _min_p(probs, mp)\n",
        replace="    probs = _min_p(probs, mp)\n    probs = _top_p(probs, p)\n",
    ),
    Mutant(
        "per_row_parameters_use_row_0",
        "a (B,) parameter tensor is read as one value (its first) for every row",
        find="    return col.reshape(batch, 1)",
        replace="    return col[:1].expand(batch).reshape(batch, 1)",
    ),
    Mutant(
        "validation_checks_first_row_only",
        "a (B,) parameter tensor is validated on its first entry only",
        find="    if not bool(ok.all()):",
        replace="    if not bool(ok.reshape(-1)[0]):",
    ),
    # -- sample -----------------------------------------------------------------------
    Mutant(
        "sample_ignores_generator",
        "draws from the global RNG instead of the generator passed in",
        find="torch.multinomial(probs, 1, generator=generator)",
        replace="torch.multinomial(probs, 1)",
    ),
    Mutant(
        "sample_ignores_filters",
        "samples from softmax(logits / t), forgetting top-k, top-p and min-p",
        find="probs = filtered_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)",
        replace="probs = filtered_probs(logits, temperature=temperature)",
    ),
    Mutant(
        "sample_takes_argmax",
        "returns the most probable token instead of drawing one",
        find="return torch.multinomial(probs, 1, generator=generator).squeeze(-1)",
        replace="return probs.argmax(dim=-1)",
    ),
    # -- repetition penalty -----------------------------------------------------------
    Mutant(
        "penalty_divides_negative_logits",
        "divides every seen logit by the penalty, which makes negative ones MORE likely",
        find="penalised = torch.where(logits > 0, logits / pen, logits * pen)",
        replace="penalised = logits / pen",
    ),
    Mutant(
        "penalty_padding_is_last_token",
        "-1 padding indexes token V - 1 (Python's negative indexing)",
        find="slots = torch.where(prev_tokens < 0, V, prev_tokens)",
        replace="slots = prev_tokens % V",
    ),
    Mutant(
        "penalty_in_place",
        "writes the penalised logits into the caller's tensor",
        find="    return torch.where(seen, penalised, logits)",
        replace="    return logits.copy_(torch.where(seen, penalised, logits))",
    ),
    Mutant(
        "penalty_once_per_occurrence",
        "penalises a token once for every time it occurs instead of once",
        find="    return torch.where(seen, penalised, logits)",
        replace="    out = logits.clone()\n"
                "    for b in range(B):\n"
                "        for tok in prev_tokens[b].tolist():\n"
                "            if tok >= 0:\n"
                "                x = out[b, tok]\n"
                "                out[b, tok] = x / pen[b, 0] if x > 0 else x * pen[b, 0]\n"
                "    return out",
    ),
    # -- found by red-teaming: exactness, dtypes, strides, batch of one -----------------
    Mutant(
        "greedy_clamps_temperature",
        "temperature 0 handled as softmax(logits / 1e-10): near-tied runners-up get mass",
        find="    z = logits / torch.where(greedy, torch.ones_like(t), t)  # (B, V)\n"
             "    is_max = logits == logits.amax(dim=-1, keepdim=True)\n"
             "    z = torch.where(greedy, torch.where(is_max, 0.0, float(\"-inf\")), z)",
        replace="    z = logits / t.clamp(min=1e-10)",
    ),
    Mutant(
        "greedy_below_epsilon",
        "a small positive temperature (below 1e-5) is treated as greedy",
        find="    greedy = t == 0  # (B, 1)",
        replace="    greedy = t < 1e-5  # (B, 1)",
    ),
    Mutant(
        "temperature_on_probabilities",
        "temperature applied as softmax(logits) ** (1 / t), renormalised: far tokens underflow to 0",
        find="    return torch.softmax(z, dim=-1)  # subtracts the row max: no overflow",
        replace="    safe = torch.where(greedy, torch.ones_like(t), t)\n"
                "    probs = torch.softmax(torch.where(greedy, z, logits), dim=-1) ** (1 / safe)\n"
                "    return probs / probs.sum(dim=-1, keepdim=True)",
    ),
    Mutant(
        "temperature_divides_in_half_precision",
        "fp16/bf16 logits are divided by the temperature in their own dtype, then cast to float32",
        find="    logits = logits.float()  # (B, V); a new tensor unless it already was float32: never written\n"
             "    B = logits.shape[0]\n"
             "    t = _per_row(temperature, \"temperature\", B, logits)",
        replace="    half = logits\n"
                "    logits = logits.float()\n"
                "    B = logits.shape[0]\n"
                "    t = _per_row(temperature, \"temperature\", B, logits)\n"
                "    safe = torch.where(t == 0, torch.ones_like(t), t)\n"
                "    logits = torch.where(t == 0, logits, (half / safe.to(half.dtype)).float() * safe)",
    ),
    Mutant(
        "greedy_row_makes_batch_greedy",
        "sample returns the argmax for every row when the first row's temperature is 0",
        find="    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)",
        replace="    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)\n"
                "    if float(torch.as_tensor(temperature).reshape(-1)[0]) == 0:\n"
                "        tokens = logits.argmax(dim=-1)\n"
                "    return tokens",
    ),
    Mutant(
        "sample_squeezes_batch_of_one",
        "squeeze() instead of squeeze(-1): a batch of one returns a 0-d tensor, not shape (1,)",
        find="return torch.multinomial(probs, 1, generator=generator).squeeze(-1)",
        replace="return torch.multinomial(probs, 1, generator=generator).squeeze()",
    ),
    Mutant(
        "parameter_dtype_not_cast",
        "parameter tensors keep their dtype: float64 parameters make float64 probabilities",
        find="    col = torch.as_tensor(value, dtype=like.dtype, device=like.device)",
        replace="    col = torch.as_tensor(value, device=like.device)",
    ),
    Mutant(
        "penalty_writes_into_flat_copy",
        "the penalty is written through logits.clone().reshape(-1), a copy for non-contiguous logits",
        find="    return torch.where(seen, penalised, logits)",
        replace="    out = logits.clone()\n"
                "    flat, rows = out.reshape(-1), torch.arange(B).unsqueeze(1).expand_as(prev_tokens)\n"
                "    valid = prev_tokens >= 0\n"
                "    idx = (rows * V + prev_tokens)[valid].unique()\n"
                "    flat[idx] = torch.where(seen, penalised, logits).reshape(-1)[idx]\n"
                "    return out",
    ),
    Mutant(
        "sample_reseeds_generator",
        "draws from a fresh generator seeded with generator.initial_seed(): every call repeats "
        "the same random numbers, so a request's decode steps are not independent",
        find="torch.multinomial(probs, 1, generator=generator)",
        replace="torch.multinomial(probs, 1, generator=None if generator is None else "
                "torch.Generator(probs.device).manual_seed(generator.initial_seed()))",
    ),
    Mutant(
        "top_k_uses_batch_max",
        "a (B,) top_k tensor is applied as its largest entry to every row",
        find="    k = torch.where((k <= 0) | (k > V), V, k).long()  # 0 or k >= V: no limit",
        replace="    k = torch.where((k <= 0) | (k > V), V, k).long()  # 0 or k >= V: no limit\n"
                "    k = k.max().expand_as(k)",
    ),
    Mutant(
        "temperature_per_row_uses_mean",
        "a (B,) temperature tensor is averaged into one temperature for the batch",
        find="    z = logits / torch.where(greedy, torch.ones_like(t), t)  # (B, V)",
        replace="    z = logits / torch.where(greedy, torch.ones_like(t), t).mean()  # (B, V)",
    ),
]
