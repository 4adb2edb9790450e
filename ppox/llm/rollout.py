"""Rollout pieces: left-padded prompts, sampling, response masks and per-token log-probs.

Layout of one rollout (every row has the same prompt width P and response width R):

    input_ids       [pad pad p1 p2 p3 | r1 r2 <eos> pad]     (batch, P + R)
    attention_mask  [ 0   0  1  1  1  |  1  1   1    0 ]
    response mask                     [  1  1   1    0 ]     (batch, R)

The logits at position t predict token t + 1, so the response's log-probs come from positions
P - 1 ... P + R - 2, and the value of the state before response token i sits at the same position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ppox.errors import PPOXError


def tokenize_prompts(tokenizer, prompts: list[str], max_new_tokens: int, context: int | None, device="cpu"):
    """Left-padded prompt ids and attention mask, (batch, P) each; errors name a prompt too long."""
    if tokenizer.pad_token_id is None:
        raise PPOXError("the tokenizer has no pad token (set tokenizer.pad_token, e.g. to the eos token)")
    encoded = []
    for i, p in enumerate(prompts):
        try:
            encoded.append(tokenizer(p, add_special_tokens=False)["input_ids"])
        except Exception as exc:  # the tokenizers library raises bare Exceptions (e.g. a character it has no id for)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PPOXError(f"prompt {i} ({p[:40]!r}) cannot be tokenized: {first}") from None
    for i, ids in enumerate(encoded):
        if not ids:
            raise PPOXError(f"prompt {i} ({prompts[i]!r}) tokenizes to nothing")
        if context is not None and len(ids) + max_new_tokens > context:
            raise PPOXError(
                f"prompt {i} ({prompts[i][:40]!r}) is {len(ids)} tokens long: with max_new_tokens="
                f"{max_new_tokens} it exceeds the model's context of {context} tokens"
            )
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)  # (batch, P)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (batch, P)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def response_mask(responses: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """(batch, R) bool: the generated tokens up to and including the first EOS.

    Found by position, not by comparing with the pad id, because many models pad with EOS.
    """
    batch, width = responses.shape
    positions = torch.arange(width, device=responses.device).expand(batch, width)
    if eos_token_id is None:
        return torch.ones_like(responses, dtype=torch.bool)
    is_eos = responses == eos_token_id
    no_eos = torch.full((batch,), width - 1, dtype=torch.long, device=responses.device)
    first_eos = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), no_eos)  # (batch,)
    return positions <= first_eos.unsqueeze(-1)


@torch.no_grad()
def sample(model, prompt_ids, prompt_mask, *, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id,
           do_sample: bool = True) -> torch.Tensor:
    """Generated tokens (batch, R) with R <= max_new_tokens; anything after the first EOS is padding."""
    kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(do_sample=False)
    out = model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs,
    )
    responses = out[:, prompt_ids.shape[1] :]
    if responses.shape[1] == 0:
        raise PPOXError("the model generated no tokens (max_new_tokens too small?)")
    return responses.masked_fill(~response_mask(responses, eos_token_id), pad_token_id)


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the real tokens only, so left padding does not shift a prompt."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (batch, seq)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0):
    """Log-prob of each token and the entropy of each distribution, both (batch, R).

    logits: (batch, R, vocab) already aligned with tokens (batch, R).
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (batch, R, vocab)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


def policy_forward(model, input_ids, attention_mask, prompt_width: int, temperature: float,
                   want_hidden: bool = False):
    """One normal forward pass over prompt + response: (logprobs, entropy, hidden or None), (batch, R)."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from(attention_mask),
        output_hidden_states=want_hidden, use_cache=False,
    )
    logits = out.logits[:, prompt_width - 1 : -1]  # (batch, R, vocab): position t predicts token t + 1
    logprobs, entropy = token_logprobs(logits, input_ids[:, prompt_width:], temperature)
    hidden = out.hidden_states[-1][:, prompt_width - 1 : -1] if want_hidden else None  # (batch, R, width)
    return logprobs, entropy, hidden
