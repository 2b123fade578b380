"""Batched frame generation with a KV cache: autoregressive, or parallel (MaskGIT).

One new frame = prefill (the context frames and the new frame's start token, one pass) and
then h*w - 1 single-token decode steps against the cache. Attention is plain causal, so the
cached decode computes exactly what a full forward would (``generate_frame_full`` is that
reference; greedy outputs match token for token, see tests).

Classifier-free guidance on the pose (``cfg_scale`` != 1): the batch is doubled, the second
half with every move replaced by the null embedding (as in conditioning dropout), and the
logits are ``uncond + s * (cond - uncond)``. Disengagement probabilities come from the
conditioned half.

Parallel decoding (a ``decoding="maskgit"`` model, MaskGIT / Genie): one prefill of the context
frames, then ``steps`` passes of the new frame's n+1 slots against the cache (block-causal,
``WorldModel.frame_mask``; the cache is not extended). Every pass predicts all still-masked
tokens; the most confident are committed so that after pass t a fraction cos(pi/2 (t+1)/steps)
stays masked (MaskGIT's cosine schedule; confidence = the committed token's log-probability, plus
Gumbel noise scaled by the temperature and the fraction of passes left when sampling). Guidance
drops the commanded move alone (the model is trained with per-frame dropout), so the context's
pass is shared by both halves. ``generate_frame_full`` is the reference: the model's full forward
over the window with the same masks, pass by pass; greedy outputs match token for token.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from drivegpt.world_model.model import KVCache, WorldModel


def _check(model: WorldModel, tokens, rel_pose, speed):
    if tokens.ndim != 4:
        raise ValueError(f"tokens: expected [b, K, h, w], got shape {tuple(tokens.shape)}")
    b, k, h, w = tokens.shape
    if (h, w) != tuple(model.cfg.grid):
        raise ValueError(f"tokens: grid {(h, w)} != the model's {tuple(model.cfg.grid)}")
    if rel_pose.shape != (b, k, 6):
        raise ValueError(f"rel_pose: expected {(b, k, 6)}, got {tuple(rel_pose.shape)}")
    if speed.shape != (b, k):
        raise ValueError(f"speed: expected {(b, k)}, got {tuple(speed.shape)}")
    if k > model.cfg.context_frames:  # keep the most recent context the model was trained with
        c = model.cfg.context_frames
        tokens, rel_pose, speed = tokens[:, -c:], rel_pose[:, -c:], speed[:, -c:]
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.vocab_size:
        raise ValueError(f"tokens: values must lie in [0, {model.cfg.vocab_size})")
    dev = next(model.parameters()).device
    return tokens.to(dev, torch.long), rel_pose.to(dev, torch.float32), speed.to(dev, torch.float32)


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """logits [b, V] -> tokens [b]. temperature 0 = greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # inverse-CDF sampling: the same distribution as torch.multinomial, whose exponential draws over
    # every (row, code) were 16% of a parallel decoding step (b*n rows at once)
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u)[:, 0].clamp_max(cdf.shape[-1] - 1)


def _guided(logits: torch.Tensor, b: int, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + cfg_scale (cond - uncond) of a batch stacked [cond; uncond].
    The cached decoders guide the hidden state before the bias-free linear lm_head, which gives the
    same logits from half the lm_head rows and a [b, n, d] instead of a [b, n, vocab] blend (5% of
    a batch-256 learned-sim step); the full references guide the logits (the definition)."""
    if cfg_scale == 1.0:
        return logits
    cond, uncond = logits[:b], logits[b:]
    return torch.lerp(uncond, cond, cfg_scale)


def _inputs(model, tokens, rel_pose, speed, cfg_scale):
    b = tokens.shape[0]
    drop = None
    if cfg_scale != 1.0:
        tokens, rel_pose, speed = (torch.cat([t, t]) for t in (tokens, rel_pose, speed))
        drop = torch.arange(2 * b, device=tokens.device) >= b
    return tokens, rel_pose, speed, drop


def masked_after(n: int, t: int, steps: int) -> int:
    """Tokens of n still masked after parallel pass t (0-based) of ``steps``: MaskGIT's cosine
    schedule, at least one committed per pass, none left after the last."""
    left = n
    for i in range(t + 1):
        left = min(left - 1, math.floor(n * math.cos(0.5 * math.pi * (i + 1) / steps)))
    return max(left, 0)


def _commit(logits, masked, out, t, steps, temperature, top_k, generator):
    """One parallel pass: logits [b, n, V] of the frame, masked [b, n] (updated in place), out
    [b, n] (written where committed). Returns the committed positions [b, n] bool and the
    log-probabilities [b, n, V] (float32) the pass read."""
    b, n, _ = logits.shape
    pick = _pick(logits.reshape(b * n, -1), temperature, top_k, generator).view(b, n)
    logp = logits.float().log_softmax(-1)
    conf = logp.gather(-1, pick[..., None])[..., 0]
    if temperature > 0:  # MaskGIT: randomness in which tokens are kept, annealed to none
        u = torch.rand(conf.shape, device=conf.device, generator=generator).clamp_(1e-9, 1 - 1e-9)
        conf = conf + temperature * (1.0 - (t + 1) / steps) * -torch.log(-torch.log(u))
    conf = conf.masked_fill(~masked, float("-inf"))
    n_new = int(masked[0].sum()) - masked_after(n, t, steps)
    new = torch.zeros_like(masked)
    new.scatter_(1, conf.topk(n_new, dim=-1).indices, True)
    out[new] = pick[new]
    masked &= ~new
    return new, logp


def _generate_parallel(model: WorldModel, tokens, rel_pose, speed, temperature, top_k, cfg_scale, generator,
                       return_entropy, steps):
    b, k, h, w = tokens.shape
    n, steps = h * w, int(steps or model.cfg.mask_steps)
    guided = cfg_scale != 1.0
    ctx = model.embed_sequence(tokens, rel_pose, speed)
    cache = KVCache(model.cfg, b, ctx.shape[1] + n + 1, ctx.device, ctx.dtype)
    model.hidden(ctx, cache, attn_mask=model.frame_blocks(k))
    if guided:  # both halves share the context: only the commanded move is dropped
        cache.k = [torch.cat([x, x]) for x in cache.k]
        cache.v = [torch.cat([x, x]) for x in cache.v]
    drop = None
    if guided:
        drop = torch.zeros(2 * b, k + 1, dtype=torch.bool, device=tokens.device)
        drop[b:, k] = True
    x_tok, x_pose, x_speed = ((torch.cat([t, t]) if guided else t) for t in (tokens, rel_pose, speed))
    cond = model.frame_conditioning(x_pose, x_speed, k + 1, drop)[:, k]
    prev = model.prev_features(x_tok[:, -1], x_tok.shape[0], model.move_features(x_pose, x_speed, k + 1, drop)[:, k])
    mask = model.frame_blocks(1, k)
    out = torch.zeros(b, n, dtype=torch.long, device=tokens.device)
    masked = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
    ent = torch.zeros(b, device=tokens.device)
    dis = None
    for t in range(steps):
        x_out, x_masked = (torch.cat([v, v]) if guided else v for v in (out, masked))
        length = cache.length
        hid = model.hidden(model.embed_frame(x_out, x_masked, k, cond, prev), cache, attn_mask=mask)
        cache.length = length  # the frame's pass is not context: the next pass overwrites it
        if dis is None:  # the start token sees the context and the move, not the frame
            dis = model.disengage_logits(hid[:b, 0], model.hazard_features(rel_pose, speed, k + 1)[:, k])
        logits = model.lm_head(_guided(hid[:, 1:], b, cfg_scale))  # lm_head is linear: guide its input
        new, logp = _commit(logits, masked, out, t, steps, temperature, top_k, generator)
        if return_entropy:  # each token's distribution when it was committed
            ent += (-(logp.exp() * logp).sum(-1) * new).sum(-1) / n
    out = rearrange(out, "b (h w) -> b h w", h=h)
    return (out, dis, ent) if return_entropy else (out, dis)


@torch.no_grad()
def _generate_parallel_full(model: WorldModel, tokens, rel_pose, speed, temperature, top_k, cfg_scale, generator,
                            steps):
    """Reference: the model's teacher-forced forward over the whole window every pass."""
    b, k, h, w = tokens.shape
    n, steps = h * w, int(steps or model.cfg.mask_steps)
    out = torch.zeros(b, n, dtype=torch.long, device=tokens.device)
    masked = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
    pose = torch.cat([rel_pose, torch.zeros_like(rel_pose[:, :1])], 1)  # the new frame's move: not read
    spd = torch.cat([speed, speed[:, -1:]], 1)
    drop = torch.zeros(b, k + 1, dtype=torch.bool, device=tokens.device)
    drop[:, k] = True
    dis = None
    for t in range(steps):
        window = torch.cat([tokens, rearrange(out, "b (h w) -> b 1 h w", h=h)], 1)
        full = torch.cat([torch.zeros(b, k, n, dtype=torch.bool, device=tokens.device), masked[:, None]], 1)
        res = model(window, pose, spd, masked=full)
        logits = res["logits"][:, -1]
        if dis is None:
            dis = res["disengage"][:, -1]
        if cfg_scale != 1.0:
            uncond = model(window, pose, spd, drop, masked=full)["logits"][:, -1]
            logits = _guided(torch.cat([logits, uncond]), b, cfg_scale)
        _commit(logits, masked, out, t, steps, temperature, top_k, generator)
    return rearrange(out, "b (h w) -> b h w", h=h), dis


@torch.no_grad()
def generate_frame(model: WorldModel, tokens, rel_pose, speed, temperature=1.0, top_k=None,
                   cfg_scale=1.0, generator=None, return_entropy=False, steps=None):
    """KV-cached generation of the frame after the context. Returns (tokens [b,h,w], dis_logits
    [b,n_h,3]) and, with ``return_entropy``, the mean entropy (nats) of the model's (guided,
    temperature-1) distributions over the frame's tokens [b]. A maskgit model decodes in
    parallel, in ``steps`` passes (default ``model.cfg.mask_steps``)."""
    if model.cfg.decoding == "maskgit":
        return _generate_parallel(model, tokens, rel_pose, speed, temperature, top_k, cfg_scale, generator,
                                  return_entropy, steps)
    b, k, h, w = tokens.shape
    n = h * w
    x_tok, x_pose, x_speed, drop = _inputs(model, tokens, rel_pose, speed, cfg_scale)
    emb = model.embed_sequence(x_tok, x_pose, x_speed, drop, open_frame=True)
    cond = model.frame_conditioning(x_pose, x_speed, k + 1, drop)[:, k]  # the new frame's move
    feats = model.move_features(x_pose, x_speed, k + 1, drop)[:, k]
    prev = model.prev_features(x_tok[:, -1], x_tok.shape[0], feats)  # the last context frame, around each new token
    cache = KVCache(model.cfg, emb.shape[0], emb.shape[1] + n - 1, emb.device, emb.dtype)
    hid = model.hidden(emb, cache)[:, -1]  # the new frame's start token
    dis = model.disengage_logits(hid[:b], model.hazard_features(rel_pose, speed, k + 1)[:, k])
    out = torch.empty(b, n, dtype=torch.long, device=tokens.device)
    ent = torch.zeros(b, device=tokens.device)
    for i in range(n):
        logits = model.lm_head(_guided(hid, b, cfg_scale))  # lm_head is linear (no bias): guide its input
        if return_entropy:
            logp = logits.float().log_softmax(-1)
            ent += -(logp.exp() * logp).sum(-1) / n
        out[:, i] = _pick(logits, temperature, top_k, generator)
        if i == n - 1:
            break
        nxt = out[:, i] if cfg_scale == 1.0 else torch.cat([out[:, i], out[:, i]])
        hid = model.hidden(model.embed_token(nxt, k, i, cond, prev), cache)[:, -1]
    out = rearrange(out, "b (h w) -> b h w", h=h)
    return (out, dis, ent) if return_entropy else (out, dis)


@torch.no_grad()
def generate_frame_full(model: WorldModel, tokens, rel_pose, speed, temperature=1.0, top_k=None,
                        cfg_scale=1.0, generator=None, steps=None):
    """Reference without a cache: one full forward over the whole sequence per token (per
    parallel pass for a maskgit model)."""
    if model.cfg.decoding == "maskgit":
        return _generate_parallel_full(model, tokens, rel_pose, speed, temperature, top_k, cfg_scale, generator, steps)
    b, k, h, w = tokens.shape
    n = h * w
    x_tok, x_pose, x_speed, drop = _inputs(model, tokens, rel_pose, speed, cfg_scale)
    prefix = model.embed_sequence(x_tok, x_pose, x_speed, drop, open_frame=True)
    cond = model.frame_conditioning(x_pose, x_speed, k + 1, drop)[:, k]
    prev = model.prev_features(x_tok[:, -1], x_tok.shape[0], model.move_features(x_pose, x_speed, k + 1, drop)[:, k])
    out = torch.empty(b, n, dtype=torch.long, device=tokens.device)
    embs = []
    dis = None
    for i in range(n):
        hid = model.hidden(torch.cat([prefix, *embs], dim=1))
        if dis is None:
            dis = model.disengage_logits(hid[:b, prefix.shape[1] - 1],
                                         model.hazard_features(rel_pose, speed, k + 1)[:, k])
        logits = _guided(model.lm_head(hid[:, -1]), b, cfg_scale)
        out[:, i] = _pick(logits, temperature, top_k, generator)
        nxt = out[:, i] if cfg_scale == 1.0 else torch.cat([out[:, i], out[:, i]])
        embs.append(model.embed_token(nxt, k, i, cond, prev))
    return rearrange(out, "b (h w) -> b h w", h=h), dis


@torch.no_grad()
def step(model: WorldModel, tokens, rel_pose, speed, temperature=1.0, top_k=None, cfg_scale=1.0,
         generator=None, return_entropy=False):
    """One simulator step (the learned-sim contract).

    tokens [b, K, h, w] int64 context frames; rel_pose [b, K, 6] where rel_pose[:, k] moves
    context frame k to k+1 (the last one is the commanded move into the new frame); speed
    [b, K] the speed at each context frame. Contexts longer than the model's are cut to the most
    recent ``context_frames``. Returns (next_tokens [b, h, w] int64, disengage_probs
    [b, n_horizons, 3]): the probability that the engaged car is disengaged within each
    horizon, per cause (STEER, BRAKE, GAS), after arriving at the new frame. With
    ``return_entropy`` also the mean per-token entropy (nats) of the new frame [b], an
    uncertainty signal for the learned simulator.
    """
    tokens, rel_pose, speed = _check(model, tokens, rel_pose, speed)
    res = generate_frame(model, tokens, rel_pose, speed, temperature, top_k, cfg_scale, generator, return_entropy)
    return (res[0], torch.sigmoid(res[1].float()), *res[2:])


@torch.no_grad()
def rollout(model: WorldModel, tokens, rel_pose, speed, future_pose, future_speed, temperature=1.0,
            top_k=None, cfg_scale=1.0, generator=None, snap=None):
    """Open-loop multi-frame rollout along commanded moves.

    tokens [b, K, h, w], rel_pose [b, K, 6] (rel_pose[:, -1] leads to the first generated
    frame), speed [b, K]; future_pose [b, N-1, 6] and future_speed [b, N-1]: the moves and
    speeds after each generated frame but the last. ``snap`` (tokens [b, h, w] -> [b, h, w]),
    e.g. ``Tokenizer.retokenize``: what the later steps read of each generated frame (the
    returned frames stay the generated ones). Returns (frames [b, N, h, w], disengage_probs
    [b, N, n_h, 3]), N = future_pose.shape[1] + 1.
    """
    tokens, rel_pose, speed = _check(model, tokens, rel_pose, speed)
    n_new = future_pose.shape[1] + 1
    frames, probs = [], []
    for j in range(n_new):
        nxt, p = step(model, tokens, rel_pose, speed, temperature, top_k, cfg_scale, generator)
        frames.append(nxt)
        probs.append(p)
        if j == n_new - 1:
            break
        read = nxt if snap is None else snap(nxt).to(nxt)
        tokens = torch.cat([tokens, read[:, None]], dim=1)[:, -model.cfg.context_frames:]
        rel_pose = torch.cat([rel_pose, future_pose[:, j : j + 1].to(rel_pose)], dim=1)[:, -model.cfg.context_frames:]
        speed = torch.cat([speed, future_speed[:, j : j + 1].to(speed)], dim=1)[:, -model.cfg.context_frames:]
    return torch.stack(frames, 1), torch.stack(probs, 1)
