"""Next-token choice from float32 logits: penalties and logit bias, then greedy or temperature / top-k / top-p.

`choose_rows` is the rule of the continuous batcher (generate/batcher.py), the one engine: every row has its
own settings, and a row pays only for what its settings ask. Each row falls in one tier, decided by its own
settings and logits alone (so a seeded request samples the same tokens whatever runs beside it), and each tier
is computed (a `lax.cond`) only when some row of the step is in it:

- greedy (temperature 0, also every idle slot): an argmax;
- whole vocabulary (temperature > 0, no top-k, no top-p): a draw from the softmax, no sort and no top_k;
- filtered (top-k and/or top-p): the row's CANDIDATES best tokens (`lax.top_k`), filtered there when that is
  exact (its top-k set, or the smallest set reaching top_p, lies inside them). The rows where it is not (a
  large top_k, a nucleus wider than the candidates: a flat distribution) take the whole vocabulary: top-k's
  cutoff by bisection, top-p by rejection (draws from the top-k distribution until one lies in the nucleus),
  and its cutoff by bisection for a row none of whose draws did.

No tier sorts the vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CANDIDATES = 128  # best tokens a filtered row looks at first (lax.top_k of them is cheap; a sort of 152k is not)
SAMPLE_BLOCK = 128  # vocabulary block of the two-stage draw (Qwen's 151,936 and 152,064 are multiples)
NUCLEUS_DRAWS = 16  # draws a whole-vocabulary top-p row tries before its cutoff is found by bisection
GREEDY, WHOLE_VOCAB, FILTERED = 0, 1, 2  # a row's tier from its settings
TIER_NAMES = ("greedy", "whole vocabulary", "filtered")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; Diabetica's dialogue evaluation used 1.1
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class RowSampling(NamedTuple):
    """Sampling settings per batch row, as arrays [b], so rows with different settings (requests of a
    continuously batched server) share one compiled decode step. frequency/presence penalties follow
    the OpenAI API: logit -= frequency * count + presence * (count > 0), over the tokens generated so far."""

    temperature: jax.Array  # float32; 0: greedy
    top_k: jax.Array  # int32; 0: off
    top_p: jax.Array  # float32; 1: off
    repetition_penalty: jax.Array  # float32; 1: off (over prompt and generated tokens, as transformers')
    frequency_penalty: jax.Array  # float32; 0: off
    presence_penalty: jax.Array  # float32; 0: off

    @staticmethod
    def of(params: SamplingParams, frequency_penalty: float = 0.0, presence_penalty: float = 0.0) -> RowSampling:
        """One row's settings (host scalars: rows are stacked before they go to the device)."""
        return RowSampling(np.float32(params.temperature), np.int32(params.top_k), np.float32(params.top_p),
                           np.float32(params.repetition_penalty), np.float32(frequency_penalty),
                           np.float32(presence_penalty))

    @staticmethod
    def neutral(rows: int) -> RowSampling:
        """Greedy, no filters, no penalties, for `rows` rows."""
        def f(value):  # separate buffers: the batcher donates each field
            return jnp.full((rows,), value, jnp.float32)

        return RowSampling(f(0.0), jnp.zeros((rows,), jnp.int32), f(1.0), f(1.0), f(0.0), f(0.0))


class LogitBias(NamedTuple):
    """OpenAI's logit_bias per row, kept sparse: `ids` [b, n] get `values` [b, n] added to their logits.
    Unused entries have value 0 (on token 0), so they change nothing."""

    ids: jax.Array  # int32
    values: jax.Array  # float32

    @staticmethod
    def of(bias: dict[int, float] | None, width: int) -> LogitBias:
        """One row's bias (host arrays [width]) from {token id: bias}, at most `width` entries."""
        ids, values = np.zeros(width, np.int32), np.zeros(width, np.float32)
        for n, (token, value) in enumerate((bias or {}).items()):
            ids[n], values[n] = token, value
        return LogitBias(ids, values)

    @staticmethod
    def none(rows: int, width: int) -> LogitBias:
        return LogitBias(jnp.zeros((rows, width), jnp.int32), jnp.zeros((rows, width), jnp.float32))


def adjusted_logits(logits: jax.Array, seen: jax.Array, counts: jax.Array, rows: RowSampling,
                    bias: LogitBias | None = None) -> jax.Array:
    """The logits the choice is made from: repetition, frequency and presence penalties, then the logit bias."""
    penalty = rows.repetition_penalty[:, None]
    logits = jnp.where(seen & (penalty != 1.0), jnp.where(logits > 0, logits / penalty, logits * penalty), logits)
    logits = logits - rows.frequency_penalty[:, None] * counts - rows.presence_penalty[:, None] * (counts > 0)
    if bias is not None:
        logits = logits.at[jnp.arange(logits.shape[0])[:, None], bias.ids].add(bias.values)
    return logits


def row_tiers(rows: RowSampling, vocab: int) -> jax.Array:
    """Each row's tier [b] from its own settings: GREEDY, WHOLE_VOCAB (sampled, unfiltered) or FILTERED."""
    filtered = _top_k_on(rows, vocab) | (rows.top_p < 1.0)
    return jnp.where(rows.temperature > 0, jnp.where(filtered, FILTERED, WHOLE_VOCAB), GREEDY)


def tiers_needed(rows: RowSampling, vocab: int) -> frozenset[str]:
    """The tiers a batch with these settings computes, by name: {'greedy'} for an all-greedy (or idle) batch."""
    return frozenset(TIER_NAMES[t] for t in np.unique(np.asarray(row_tiers(rows, vocab))))


def choose_rows(logits: jax.Array, seen: jax.Array, counts: jax.Array, rows: RowSampling,
                keys: jax.Array, bias: LogitBias | None = None, sampled: bool = True) -> jax.Array:
    """Token ids [b] from logits [b, vocab] with each row's own settings; `keys` [b] are per-row PRNG keys.

    Greedy rows take the argmax of their adjusted logits (the first largest, as transformers' greedy search
    does); sampled rows draw from the distribution transformers' TopK and TopP warpers leave (see the module's
    docstring for how each tier computes it). `sampled=False` (static) promises that every row is greedy: only
    the argmax is built, the same tokens from a program that compiles several times faster (the sampling
    tiers are most of a decode step's compile time on a CPU).
    """
    logits = logits.astype(jnp.float32)
    adjusting = _adjusting(rows, bias)

    def choose(logits):
        return _choose_by_tier(logits, rows, keys) if sampled else _argmax(logits, rows, keys)

    def adjusted(logits):  # only the rows that adjust: the others' logits stay bit for bit the model's
        return choose(jnp.where(adjusting[:, None], adjusted_logits(logits, seen, counts, rows, bias), logits))

    # without penalties or bias (the usual batch) no adjusted copy of the logits is made: a pass over
    # [slots, vocab] costs about as much as the choice
    return jax.lax.cond(jnp.any(adjusting), adjusted, choose, logits)


def allowed_tokens(logits: jax.Array, rows: RowSampling) -> jax.Array:
    """The tokens [b, vocab] bool a sampled row may draw after top-k and top-p, from adjusted logits: the
    candidates' set where it is exact, else the whole vocabulary's by bisection (what every route of
    `choose_rows` draws from)."""
    values, ids = jax.lax.top_k(logits, min(CANDIDATES, logits.shape[-1]))
    keep, exact = _filter_candidates(values, logits, rows)
    row = jnp.arange(logits.shape[0])[:, None]
    from_candidates = jnp.zeros(logits.shape, bool).at[row, ids].set(keep)
    from_whole = _nucleus_by_bisection(_top_k_whole_vocab(_scaled(logits, rows), rows), rows) > -jnp.inf
    return jnp.where(exact[:, None], from_candidates, from_whole)


# ---- the tiers ---------------------------------------------------------------------------------------

def _adjusting(rows, bias):
    """Rows [b] with a penalty or a logit bias."""
    penalised = (rows.repetition_penalty != 1.0) | (rows.frequency_penalty != 0) | (rows.presence_penalty != 0)
    return penalised if bias is None else penalised | jnp.any(bias.values != 0, axis=-1)


def _choose_by_tier(logits, rows, keys):
    tier = row_tiers(rows, logits.shape[-1])
    token = jnp.zeros(logits.shape[:1], jnp.int32)
    token = _in_tier(tier == GREEDY, _argmax, token, logits, rows, keys)
    token = _in_tier(tier == WHOLE_VOCAB, _sample_unfiltered, token, logits, rows, keys)
    return _in_tier(tier == FILTERED, _sample_filtered, token, logits, rows, keys)


def _in_tier(members, compute, token, logits, rows, keys):
    """`token` [b] with the members' entries replaced by compute(logits, rows, keys)'s, which runs (a
    lax.cond) only when the batch has a member. Inside it the other rows' filters are off: their results are
    dropped, so they must not make it do more. Each row's result depends on that row alone, so who else is
    in the tier is moot."""
    rows = rows._replace(top_k=jnp.where(members, rows.top_k, 0), top_p=jnp.where(members, rows.top_p, 1.0))
    chosen = jax.lax.cond(jnp.any(members), compute, lambda *_: jnp.zeros_like(token), logits, rows, keys)
    return jnp.where(members, chosen, token)


def _argmax(logits, rows, keys):
    """jnp.argmax's answer (the first largest: lax.top_k's documented tie order) as lax.top_k(logits, 1): in
    the 24-slot decode step on XLA CPU (2 cores) the argmax reduce over value-index pairs took 9 ms, this 4."""
    return jax.lax.top_k(logits, 1)[1][:, 0].astype(jnp.int32)


def _sample_unfiltered(logits, rows, keys):
    return _draw(keys, *_blocks(_scaled(logits, rows)))


def _sample_filtered(logits, rows, keys):
    """Top-k / top-p among the row's best CANDIDATES tokens; the rows where that is not exact (each row's
    `exact` is its own) take the whole vocabulary instead."""
    values, ids = jax.lax.top_k(logits, min(CANDIDATES, logits.shape[-1]))
    keep, exact = _filter_candidates(values, logits, rows)
    scaled = jnp.where(keep, values / _temperature(rows), -jnp.inf)
    pick = jax.vmap(jax.random.categorical)(keys, scaled)
    token = jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return _in_tier(~exact, _sample_whole_filtered, token, logits, rows, keys)


def _sample_whole_filtered(logits, rows, keys):
    """Top-k by its cutoff over the whole vocabulary when some row has one (it leaves the others as they
    are), then top-p."""
    def with_top_k(scaled):
        return _sample_nucleus(_top_k_whole_vocab(scaled, rows), rows, keys)

    def without(scaled):
        return _sample_nucleus(scaled, rows, keys)

    return jax.lax.cond(jnp.any(_top_k_on(rows, logits.shape[-1])), with_top_k, without, _scaled(logits, rows))


def _sample_nucleus(scaled, rows, keys):
    """Top-p by rejection: a token is in the nucleus iff the tokens more likely than it hold less than top_p
    of the mass, so the first of a row's draws that is in it is a draw from the renormalised nucleus. A check
    is one pass over the vocabulary where a bisection takes 32; a wide nucleus (top_p 0.9) takes about one
    draw in 0.9. The rows none of whose NUCLEUS_DRAWS draws is in it (a small top_p on a flat distribution)
    get their cutoff by bisection."""
    padded, masses = _blocks(scaled)
    weight = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))
    b = scaled.shape[0]
    target = rows.top_p[:, None] * jnp.sum(weight, axis=-1, keepdims=True)

    def unfinished(state):
        draw, _, done = state
        return (draw < NUCLEUS_DRAWS) & ~jnp.all(done)

    def try_once(state):
        draw, token, done = state
        drawn = _draw(jax.vmap(jax.random.fold_in, (0, None))(keys, draw), padded, masses)
        value = jnp.take_along_axis(scaled, drawn[:, None], axis=-1)
        above = jnp.sum(jnp.where(scaled > value, weight, 0.0), axis=-1, keepdims=True)
        inside = ((above < target) | ~_nucleus_on(rows))[:, 0]  # no top-p: the first draw is the one
        return draw + 1, jnp.where(done, token, drawn), done | inside

    start = (0, jnp.zeros(b, jnp.int32), jnp.zeros(b, bool))
    _, token, done = jax.lax.while_loop(unfinished, try_once, start)
    return _in_tier(~done, _draw_below_cutoff, token, scaled, rows, keys)


def _draw_below_cutoff(scaled, rows, keys):
    keys = jax.vmap(jax.random.fold_in, (0, None))(keys, NUCLEUS_DRAWS)  # not one the rejection draws used
    return _draw(keys, *_blocks(_nucleus_by_bisection(scaled, rows)))


def _temperature(rows):
    return jnp.maximum(rows.temperature, 1e-6)[:, None]  # rows outside the tier may be greedy (0)


def _scaled(logits, rows):
    return logits / _temperature(rows)


def _top_k_on(rows, vocab):
    return (rows.top_k > 0) & (rows.top_k < vocab)


def _nucleus_on(rows):
    return rows.top_p[:, None] < 1.0


def _k(rows, vocab):
    """The top-k size [b, 1]: the whole vocabulary when off."""
    return jnp.where(_top_k_on(rows, vocab), rows.top_k, vocab)[:, None]


# ---- filtering ---------------------------------------------------------------------------------------
# transformers' rule: scaled = logits / temperature; top-k keeps the tokens at least as large as the k-th
# largest (ties included); top-p, over the distribution top-k left (renormalised), keeps the smallest set of
# most likely tokens whose probability reaches top_p, and every token at least as likely as its last member.

def _filter_candidates(values, logits, rows):
    """Top-k / top-p within the row's best tokens `values` [b, c] (from lax.top_k, best first): (which to
    keep [b, c], exact [b]: whether the kept set is the whole-vocabulary one, every token that belongs to it
    being a candidate; true for a row with no filter)."""
    vocab, c = logits.shape[-1], values.shape[-1]
    complete = c == vocab  # a vocabulary no larger than CANDIDATES
    scaled = values / _temperature(rows)
    last = scaled[:, -1:]
    k = _k(rows, vocab)
    kth = jnp.take_along_axis(scaled, jnp.minimum(k, c) - 1, axis=-1)
    in_top_k = scaled >= kth
    # the k-th's ties could continue past the candidates unless it beats the last one
    top_k_inside = complete | ((k <= c) & (kth > last))[:, 0]
    # top-p's normaliser: the top-k set's mass when it is all here, else (top-k off) the whole vocabulary's,
    # a pass over it made only when some row has top-p without top-k
    here = jax.nn.logsumexp(jnp.where(in_top_k, scaled, -jnp.inf), axis=-1, keepdims=True)
    nucleus = _nucleus_on(rows)
    needs_whole = nucleus[:, 0] & ~_top_k_on(rows, vocab) & ~top_k_inside
    whole = jax.lax.cond(jnp.any(needs_whole), lambda: _log_mass(logits, rows, scaled[:, :1]), lambda: here)
    normaliser = jnp.where(top_k_inside[:, None], here, whole)
    cumulative = jnp.cumsum(jnp.where(in_top_k, jnp.exp(scaled - normaliser), 0.0), axis=-1)
    reached = jnp.sum(cumulative < rows.top_p[:, None], axis=-1, keepdims=True)  # index of the set's last member
    cutoff = jnp.take_along_axis(scaled, jnp.minimum(reached, c - 1), axis=-1)
    nucleus_inside = complete | ((reached < c) & (cutoff > last))[:, 0]
    keep = in_top_k & (~nucleus | (scaled >= cutoff))
    exact = jnp.where(_top_k_on(rows, vocab), top_k_inside, nucleus_inside | ~nucleus[:, 0])
    return keep, exact


def _log_mass(logits, rows, largest):
    """logsumexp(logits / temperature) [b, 1] given its largest term `largest` [b, 1] (the best candidate's):
    one fused pass, no [b, vocab] array of scaled logits made."""
    return largest + jnp.log(jnp.sum(jnp.exp(_scaled(logits, rows) - largest), axis=-1, keepdims=True))


def _top_k_whole_vocab(scaled, rows):
    """`scaled` [b, vocab] with the tokens below the k-th largest set to -inf, the k-th found by bisection
    (a row without top-k: its smallest, so it keeps every token)."""
    k = _k(rows, scaled.shape[-1])
    kth = _largest_value_where(scaled, lambda t: jnp.sum(scaled >= t, axis=-1, keepdims=True) >= k)
    return jnp.where(scaled >= kth, scaled, -jnp.inf)


def _nucleus_by_bisection(scaled, rows):
    """`scaled` [b, vocab] with the tokens outside the top-p nucleus set to -inf. The cutoff is the logit of
    the smallest set's last member: the largest t whose tokens at least as large as t hold top_p of the mass."""
    weight = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))
    target = rows.top_p[:, None] * jnp.sum(weight, axis=-1, keepdims=True)
    cutoff = _largest_value_where(
        scaled, lambda t: jnp.sum(jnp.where(scaled >= t, weight, 0.0), axis=-1, keepdims=True) >= target)
    return jnp.where(_nucleus_on(rows) & (scaled < cutoff), -jnp.inf, scaled)


def _largest_value_where(x, holds):
    """Per row, the largest value t [b, 1] with `holds(t)` [b, 1], for a `holds` true at the row's minimum of
    `x` [b, n] and, once false, false for every larger t: a bisection over the float32s in order (their bits
    as ordered integers), 32 halvings, so the answer is exact (one of the row's values)."""
    low = _ordered_bits(jnp.min(x, axis=-1, keepdims=True))
    high = _ordered_bits(jnp.max(x, axis=-1, keepdims=True))

    def halve(_, bounds):  # holds(low); the answer lies in [low, high]
        low, high = bounds
        span = high.astype(jnp.uint32) - low.astype(jnp.uint32)  # up to 2^32 - 2: no int32 overflow
        middle = low + ((span + 1) // 2).astype(jnp.int32)
        ok = holds(_ordered_bits(middle, inverse=True))
        return jnp.where(ok, middle, low), jnp.where(ok, high, middle - 1)

    low, _ = jax.lax.fori_loop(0, 32, halve, (low, high))
    return _ordered_bits(low, inverse=True)


def _ordered_bits(x, inverse=False):
    """float32 <-> int32 keys in the same order (negative floats' magnitude bits flipped; its own inverse)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) if not inverse else x
    keys = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    return jax.lax.bitcast_convert_type(keys, jnp.float32) if inverse else keys


# ---- drawing -----------------------------------------------------------------------------------------
# One token per row from softmax(scaled) [b, vocab] (-inf: never) in two stages: a block of SAMPLE_BLOCK
# tokens by its probability mass, then a token within it. The same distribution as one categorical draw, with
# b * (vocab / SAMPLE_BLOCK + SAMPLE_BLOCK) random numbers instead of b * vocab (those dominate on a CPU).

def _blocks(scaled):
    """(scaled as [b, blocks, SAMPLE_BLOCK], -inf padded; each block's log-mass [b, blocks])."""
    b, vocab = scaled.shape
    blocks = -(-vocab // SAMPLE_BLOCK)
    padded = jnp.pad(scaled, ((0, 0), (0, blocks * SAMPLE_BLOCK - vocab)), constant_values=-jnp.inf)
    padded = padded.reshape(b, blocks, SAMPLE_BLOCK)
    return padded, jax.nn.logsumexp(padded, axis=-1)


def _draw(keys, padded, masses):
    block_keys, token_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    block = jax.vmap(jax.random.categorical)(block_keys, masses)
    within = jnp.take_along_axis(padded, block[:, None, None], axis=1)[:, 0]
    offset = jax.vmap(jax.random.categorical)(token_keys, within)
    return (block * SAMPLE_BLOCK + offset).astype(jnp.int32)
