"""Slow greedy decoding for babelora.methods.speech_llm.model (tests only): one utterance at a
time, no
padding, no KV cache - the full sequence [speech, prompt, generated tokens] is re-run each step."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_full_recompute(model, batch, max_new_tokens: int) -> list[list[int]]:
    embed = model.lm.get_input_embeddings()
    proj = model.speech_prefix(batch.features, batch.feature_lengths)
    results = []
    for b, prompt in enumerate(batch.prompt_ids):
        speech = proj.embeds[b, : int(proj.mask[b].sum())]
        seq = torch.cat([speech, embed(torch.tensor(prompt))]).unsqueeze(0)  # (1, S, O)
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits = model.lm(inputs_embeds=seq, use_cache=False).logits  # (1, S, V)
            tok = int(logits[0, -1].argmax())
            if tok == model.eos_id:
                break
            out.append(tok)
            seq = torch.cat([seq, embed(torch.tensor([[tok]]))], dim=1)
        results.append(out)
    return results


def row_nll(model, batch, b: int) -> tuple[float, int]:
    """Summed target NLL of utterance b run alone (no padding), and its token count."""
    embed = model.lm.get_input_embeddings()
    proj = model.speech_prefix(batch.features[b : b + 1], batch.feature_lengths[b : b + 1])
    speech = proj.embeds[0, : int(proj.mask[0].sum())]
    prompt, target = batch.prompt_ids[b], batch.target_ids[b]
    seq = torch.cat([speech, embed(torch.tensor(prompt)), embed(torch.tensor(target[:-1]))])
    logits = model.lm(inputs_embeds=seq.unsqueeze(0), use_cache=False).logits[0]
    tail = logits[-len(target) :]  # positions that predict the target tokens
    nll = torch.nn.functional.cross_entropy(tail.float(), torch.tensor(target), reduction="sum")
    return float(nll), len(target)
