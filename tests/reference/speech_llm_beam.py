"""Slow beam search for babelora.methods.speech_llm.model (tests only): one utterance at a time,
no padding, no KV cache - the full sequence [speech, prompt, beam tokens] is re-run for every
beam at every step."""

from __future__ import annotations

import torch

from babelora.decode.search import DecodeOptions
from reference.naive_decode import beam_full_recompute


@torch.no_grad()
def speech_llm_beam(model, batch, max_new_tokens: int, beams: int) -> list[list[int]]:
    embed = model.lm.get_input_embeddings()
    proj = model.speech_prefix(batch.features, batch.feature_lengths)
    options = DecodeOptions(
        beam_size=beams, max_new_tokens=max_new_tokens, length_penalty=model.cfg.length_penalty
    )
    results = []
    for b, prompt in enumerate(batch.prompt_ids):
        speech = proj.embeds[b, : int(proj.mask[b].sum())]
        prefix = torch.cat([speech, embed(torch.tensor(prompt))])  # (S, O)

        def next_logprobs(tokens, prefix=prefix):
            seq = torch.cat([prefix, embed(torch.tensor(tokens, dtype=torch.long))])
            out = model.lm(inputs_embeds=seq.unsqueeze(0), use_cache=False, logits_to_keep=1)
            return torch.log_softmax(out.logits[0, -1].float(), -1)

        results.append(beam_full_recompute(next_logprobs, model.eos_id, options))
    return results
