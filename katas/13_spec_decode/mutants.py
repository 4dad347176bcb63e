"""Planted bugs for kata 13: classic speculative-decoding mistakes, as edits of
reference/spec_decode.py (its torch path: the one that runs on a CPU)."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    # -- greedy_verify -------------------------------------------------------------------
    Mutant("greedy_counts_every_match",
           "greedy verification counts every matching draft, not the run before the first miss",
           find="num_accepted = matches.long().cumprod(dim=1).sum(dim=1)",
           replace="num_accepted = matches.long().sum(dim=1)"),
    Mutant("greedy_emits_argmax_of_previous_position",
           "after the accepted drafts, emits the argmax of the last accepted position's row",
           find="last = target_probs[rows, num_accepted].argmax(dim=1)",
           replace="last = target_probs[rows, (num_accepted - 1).clamp(min=0)].argmax(dim=1)"),
    # -- acceptance ----------------------------------------------------------------------
    Mutant("accept_when_p_at_least_q",
           "accepts a draft exactly when p(x) >= q(x), deterministically, instead of with "
           "probability min(1, p/q)",
           find="accepted = u * q_x < p_x", replace="accepted = p_x >= q_x"),
    Mutant("ratio_q_over_p",
           "accepts with probability min(1, q/p) (the ratio upside down)",
           find="accepted = u * q_x < p_x", replace="accepted = u * p_x < q_x"),
    Mutant("one_uniform_per_row",
           "draws one uniform per row and reuses it at every position, so acceptances are "
           "correlated",
           find="u = torch.rand(B, k, generator=generator, device=dev, dtype=ftype)",
           replace="u = torch.rand(B, 1, generator=generator, device=dev, dtype=ftype).expand(B, k)"),
    Mutant("no_stop_after_first_rejection",
           "counts every accepted draft, also those after the first rejection",
           find="num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)",
           replace="num_accepted = accepted.long().sum(dim=1)"),
    Mutant("resample_from_target",
           "after a rejection, samples from p itself instead of the residual max(0, p - q)",
           find="residual = (p_next - q_next).clamp(min=0)", replace="residual = p_next.clone()"),
    Mutant("residual_absolute_difference",
           "uses |p - q| as the residual instead of max(0, p - q)",
           find="residual = (p_next - q_next).clamp(min=0)", replace="residual = (p_next - q_next).abs()"),
    Mutant("residual_not_clamped",
           "forgets the clamp: p - q has negative entries, not a distribution",
           find="residual = (p_next - q_next).clamp(min=0)", replace="residual = p_next - q_next"),
    Mutant("bonus_subtracts_last_draft",
           "the bonus token also subtracts q_{k-1}, as if it were a rejection",
           find="        q_next = torch.where((num_accepted < k)[:, None], q_next, 0.0)  # bonus: no draft to subtract\n",
           replace=""),
    Mutant("bonus_from_previous_target_row",
           "draws the bonus token from p_{k-1} instead of p_k",
           find="p_next = target_probs[rows, num_accepted].to(ftype)",
           replace="p_next = target_probs[rows, num_accepted.clamp(max=max(k - 1, 0))].to(ftype)"),
    Mutant("bonus_from_draft",
           "draws the bonus token from the draft's last distribution q_{k-1}",
           find="p_next = target_probs[rows, num_accepted].to(ftype)",
           replace="p_next = target_probs[rows, num_accepted].to(ftype)\n"
                   "    if k > 0:\n"
                   "        p_next = torch.where((num_accepted == k)[:, None],\n"
                   "                             draft_probs[:, k - 1].to(ftype), p_next)"),
    Mutant("correction_is_argmax",
           "takes the most likely residual token instead of sampling it",
           find="last = torch.multinomial(residual, 1, generator=generator).squeeze(1)",
           replace="last = residual.argmax(dim=1)"),
    # -- the output ----------------------------------------------------------------------
    Mutant("num_accepted_counts_emitted",
           "returns the number of emitted tokens (accepted + 1) as num_accepted",
           find="return _emit(draft_tokens, num_accepted, last), num_accepted\n\n\n# -----"
                "------------------------------------------------------------------------- Task 4",
           replace="return _emit(draft_tokens, num_accepted, last), num_accepted + 1\n\n\n# -----"
                   "------------------------------------------------------------------------- Task 4"),
    Mutant("padding_with_zero",
           "pads with 0, a real token, instead of -1",
           find="tokens = torch.full((B, k + 1), -1, dtype=torch.long, device=draft_tokens.device)",
           replace="tokens = torch.zeros((B, k + 1), dtype=torch.long, device=draft_tokens.device)"),
    Mutant("global_rng_not_generator",
           "draws the acceptance uniforms from the global RNG, ignoring `generator`",
           find="u = torch.rand(B, k, generator=generator, device=dev, dtype=ftype)",
           replace="u = torch.rand(B, k, device=dev, dtype=ftype)"),
    # -- speculative_generate --------------------------------------------------------------
    Mutant("overshoots_max_new_tokens",
           "drafts k tokens even in the last round and keeps everything, returning too many",
           find="n_draft = min(k, max_new_tokens - len(out) - 1)",
           replace="n_draft = min(k, max_new_tokens - len(out))"),
    Mutant("draft_row_off_by_one",
           "passes the draft distribution of the next position (after x_i) as q_i",
           find="            q_rows.append(q)\n",
           replace="            q_rows.append(draft(seq + drafted)[-1])\n"),
    Mutant("context_not_extended",
           "forgets to append the emitted tokens to the context between rounds",
           find="        out += new\n        seq += new\n", replace="        out += new\n"),
    Mutant("one_draft_per_call",
           "ignores k and drafts a single token per round (no speedup: one target call per token "
           "or two)",
           find="n_draft = min(k, max_new_tokens - len(out) - 1)",
           replace="n_draft = min(1, max_new_tokens - len(out) - 1)"),
]
