"""Planted bugs for kata 06: classic mistakes in a LLaMA forward pass, its KV cache and its
greedy loop. Each must be caught by a test."""
from harness import Mutant

MUTANTS: list[Mutant] = [
    # -- Task 1: RMSNorm
    Mutant("rms_without_eps",
           "drops eps: an all-zero row gives 0 * inf = NaN and tiny rows blow up",
           "x32.pow(2).mean(-1, keepdim=True) + eps)", "x32.pow(2).mean(-1, keepdim=True))"),
    Mutant("rms_in_input_dtype",
           "normalises in the input dtype: x*x overflows fp16 past 256",
           "x32 = x.to(torch.float32)", "x32 = x"),
    Mutant("rms_bf16_in_input_dtype",
           "upcasts fp16 (which overflows) but squares and normalises bfloat16 in bfloat16",
           "x32 = x.to(torch.float32)",
           "x32 = x if x.dtype == torch.bfloat16 else x.to(torch.float32)"),
    Mutant("rms_weight_before_rounding",
           "multiplies by weight in float32 and rounds once at the end, not as LlamaRMSNorm "
           "(round the normalised x to x's dtype, then multiply)",
           "return weight * normed.to(x.dtype)", "return (weight * normed).to(x.dtype)"),
    # -- Task 2: RoPE
    Mutant("rope_interleaved",
           "pairs (2i, 2i+1) as in the original RoPE paper / Meta's checkpoints, not Hugging "
           "Face's (i, i + D/2)",
           "    x1, x2 = xf[..., :half], xf[..., half:]\n"
           "    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)\n",
           "    x1, x2 = xf[..., 0::2], xf[..., 1::2]\n"
           "    out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)\n"),
    # -- Task 3: config.json
    Mutant("rope_theta_hardcoded",
           "ignores the config's rope_theta and uses the classic 10000",
           "rope_theta = float(params.get(\"rope_theta\", raw.get(\"rope_theta\", 10000.0)))",
           "rope_theta = 10000.0"),
    Mutant("head_dim_from_hidden",
           "always computes head_dim = hidden_size // num_attention_heads, ignoring the config",
           "head_dim=int(raw.get(\"head_dim\") or hidden // heads)", "head_dim=hidden // heads"),
    Mutant("legacy_type_key_ignored",
           "reads only rope_scaling['rope_type']: a 4.x config with the legacy 'type' key loses "
           "its llama3 scaling",
           "rope_type = params.get(\"rope_type\", params.get(\"type\", \"default\"))",
           "rope_type = params.get(\"rope_type\", \"default\")"),
    Mutant("unknown_rope_type_ignored",
           "treats an unknown RoPE type (yarn, dynamic, ...) as no scaling instead of refusing it",
           "            raise NotImplementedError(\n"
           "                f\"RoPE type {rope_type!r} is not supported (only 'default' and 'llama3')\")",
           "            scaling = None"),
    Mutant("original_max_from_max_position",
           "takes llama3's original context from max_position_embeddings even when the dict has "
           "original_max_position_embeddings",
           "params.get(\"original_max_position_embeddings\", max_pos)", "max_pos"),
    Mutant("llama3_scales_high_frequencies",
           "llama3 scaling: divides the short waves (high frequencies) by factor instead of "
           "the long ones",
           "torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)",
           "torch.where(wavelen < high_freq_wavelen, inv_freq / factor, inv_freq)"),
    # -- Task 4: the forward pass
    Mutant("gqa_head_modulo",
           "GQA with repeat instead of repeat_interleave: query head h reads KV head h % Hkv",
           "k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)",
           "k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)"),
    Mutant("causal_mask_top_left",
           "aligns the causal mask top-left (torch's is_causal): new tokens cannot see the "
           "cached ones beyond their own index",
           "scores.masked_fill(j > i + (Sk - Sq), float(\"-inf\"))",
           "scores.masked_fill(j > i, float(\"-inf\"))"),
    Mutant("untied_head_ignores_lm_head",
           "always uses the embedding as the output head, even when the file has lm_head.weight",
           "head = weights.get(\"lm_head.weight\", embed)", "head = embed"),
    Mutant("swiglu_gate_up_swapped",
           "SwiGLU with the roles swapped: silu(up) * gate",
           "h = h + (F.silu(gate) * up) @ w[p + \"mlp.down_proj.weight\"].T",
           "h = h + (F.silu(up) * gate) @ w[p + \"mlp.down_proj.weight\"].T"),
    Mutant("missing_attention_residual",
           "drops the residual connection around attention",
           "h = h + attn @ w[p + \"self_attn.o_proj.weight\"].T",
           "h = attn @ w[p + \"self_attn.o_proj.weight\"].T"),
    Mutant("dtype_argument_ignored",
           "from_pretrained ignores dtype: a bfloat16 request still runs in float32",
           "name: t.to(device=device, dtype=dtype)", "name: t.to(device=device)"),
    # -- Task 5: the KV cache
    Mutant("rope_positions_not_offset",
           "rotates new tokens as if they started at position 0, ignoring the cache length",
           "positions = torch.arange(start, start + S, device=input_ids.device)",
           "positions = torch.arange(0, S, device=input_ids.device)"),
    Mutant("cache_length_not_advanced",
           "writes the new K/V but never advances cache.length",
           "            cache.length = end\n", "            pass\n"),
    Mutant("decode_reads_unfilled_cache",
           "attends over all max_len cache slots, the empty ones included",
           "k, v = cache.k[i][:, :, :end], cache.v[i][:, :, :end]", "k, v = cache.k[i], cache.v[i]"),
    Mutant("max_len_check_off_by_one",
           "refuses a chunk that exactly fills the cache",
           "if start + S > cache.max_len:", "if start + S >= cache.max_len:"),
    Mutant("new_cache_ignores_batch",
           "allocates a cache for one sequence whatever the batch",
           "shape = (batch, c.num_key_value_heads, max_len, c.head_dim)",
           "shape = (1, c.num_key_value_heads, max_len, c.head_dim)"),
    # -- Task 6: generate
    Mutant("eos_not_included",
           "stops at eos_id without returning it",
           "        out.append(token)\n        if token == eos_id or len(out) == max_new_tokens:\n"
           "            return out\n",
           "        if token == eos_id:\n            return out\n        out.append(token)\n"
           "        if len(out) == max_new_tokens:\n            return out\n"),
    Mutant("generate_zero_gives_one",
           "returns one token for max_new_tokens=0",
           "    if max_new_tokens <= 0:\n        return []\n", ""),
    Mutant("generate_forgets_cache",
           "decodes each new token without the cache: the model sees only that one token",
           "logits = model(torch.tensor([[token]], dtype=torch.long, device=device), cache)",
           "logits = model(torch.tensor([[token]], dtype=torch.long, device=device))"),
    Mutant("eos_first_token_missed",
           "checks eos only from the second new token on: an eos straight after the prompt "
           "does not stop",
           "if token == eos_id or len(out) == max_new_tokens:",
           "if (token == eos_id and len(out) > 1) or len(out) == max_new_tokens:"),
]
