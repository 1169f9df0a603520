"""Continuous batching: many requests share one running decode batch, joining and leaving at step boundaries.

The batch has a fixed number of slots, each with its own rows in one KV cache of fixed length, so the decode
step is one compiled program whatever the mix of requests. A request waits in a queue until a slot is free;
its prompt is then prefilled into that slot (left-padded to a power-of-two bucket, so prompt lengths share a
handful of compiled programs) while the other slots keep their caches, and from the next step on it decodes
with the rest. Each slot has its own write position, rope position, sampling settings, logit bias and PRNG
key, so a request computes what it would alone and a seeded request samples the same tokens whatever runs
beside it. A freed slot's settings go back to greedy with no bias, so idle slots cost what greedy ones do.
A request leaves its slot when it produces a stop token, reaches its token limit, or is cancelled (a client
that went away); the slot is free for the next request at the next step.

One scheduler thread owns the device state; callers talk to it through `Ticket`s, which are thread-safe.
Between two decode steps it admits at most `prefills_per_step` waiting requests (all of them when nothing
is decoding), so new prompts interleave with decoding instead of stalling it.

`generate` is the blocking path for many prompts at once (evaluation, the CLI): its requests are queued
together and nobody watches their tokens arrive, so while only such requests decode, one device call runs up
to `steps_per_call` decode steps (ending early once a slot finishes, so a waiting prompt takes its place
at once) instead of paying the host's round trip per token. `stream` yields one request's tokens as they come
(the terminal chat).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diabetica_jax.generate.padding import MIN_BUCKET, bucket, left_pad
from diabetica_jax.generate.sampling import LogitBias, RowSampling, SamplingParams, choose_rows
from diabetica_jax.model.qwen import KVCache, Qwen

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # alternatives reported per token to requests that ask for logprobs (OpenAI's maximum)
MAX_LOGIT_BIAS = 300  # logit_bias entries one request may set (OpenAI's limit)
# decode steps per device call for unwatched requests: the host's dispatch and sync per token is gone, and a
# call still ends at the first slot that finishes, so only cancellation waits for up to this many steps
STEPS_PER_CALL = 16


class BatcherError(RuntimeError):
    """A request the batcher cannot take (prompt too long, token limit too high, queue full, shut down)."""


class Slots(NamedTuple):
    """The device state of every slot; rows are slots."""

    cache: KVCache  # [layers, slots, max_len, kv_heads, head_dim] each
    key_valid: jax.Array  # [slots, max_len] cache positions holding real tokens
    write_index: jax.Array  # [slots] cache position the next token goes to
    position: jax.Array  # [slots] rope position of the next token
    token: jax.Array  # [slots] the last chosen token, not yet run through the model
    seen: jax.Array  # [slots, vocab] bool: prompt and generated tokens (repetition penalty)
    counts: jax.Array  # [slots, vocab] int32: generated tokens (frequency / presence penalties)
    sampling: RowSampling  # [slots] each
    bias: LogitBias  # [slots, MAX_LOGIT_BIAS] each
    keys: jax.Array  # [slots, 2] per-slot PRNG keys


@dataclasses.dataclass(frozen=True)
class Finished:
    """The last event of a ticket. reason: 'stop' (a stop token), 'length' (max_new_tokens), 'cancelled',
    or 'error' (with `error` saying what went wrong)."""

    reason: str
    error: str | None = None


class Ticket:
    """One request's handle: its tokens arrive as they are chosen, then a `Finished`.

    `deliver` (optional) is called from the scheduler thread with each event (an int token id or a
    Finished); without it events queue up for `events()`. `cancel()` frees the slot at the next step.
    Log-probabilities are the model's own (before penalties, logit bias, temperature and filters), as OpenAI
    reports them. `watched`: someone may read the tokens as they come (every `submit`); a blocking `generate`'s
    tickets are not, so their tokens may arrive several decode steps at a time.
    """

    _ids = itertools.count()

    def __init__(self, prompt: list[int], max_new_tokens: int, sampling: SamplingParams,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, logprobs: bool = False,
                 deliver: Callable[[int | Finished], None] | None = None, logit_bias: dict[int, float] | None = None,
                 watched: bool = True):
        self.id = next(self._ids)
        self.watched = watched
        # with `logprobs`, each token's entry is stored here before the token is delivered:
        # (its log-probability, [(alternative id, log-probability)] best first)
        self.want_logprobs = logprobs
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []
        self.prompt, self.max_new_tokens, self.sampling = prompt, max_new_tokens, sampling
        self.frequency_penalty, self.presence_penalty = frequency_penalty, presence_penalty
        self.logit_bias = dict(logit_bias or {})  # {token id: added to its logit}
        self.tokens: list[int] = []
        self.finished: Finished | None = None
        self._cancelled = threading.Event()
        self._queue: queue.SimpleQueue | None = None if deliver else queue.SimpleQueue()
        self._deliver = deliver or self._queue.put

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self, timeout: float | None = None) -> Iterator[int | Finished]:
        """Token ids as they come, then the Finished event (only for tickets made without `deliver`)."""
        if self._queue is None:
            raise RuntimeError("this ticket delivers its events through its callback")
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if isinstance(event, Finished):
                return

    def result(self, timeout: float | None = None) -> tuple[list[int], Finished]:
        """Block until done: (generated token ids without the stop token, how it finished)."""
        for event in self.events(timeout):
            if isinstance(event, Finished):
                return self.tokens, event
        raise AssertionError("unreachable")

    def _emit(self, event: int | Finished) -> None:
        if isinstance(event, Finished):
            self.finished = event
        else:
            self.tokens.append(event)
        try:
            self._deliver(event)
        except Exception as e:  # a listener that fails (its event loop closed) must not stop the scheduler
            log.warning("ticket %d: delivering an event failed (%s: %s); cancelling it", self.id, type(e).__name__, e)
            self.cancel()


class Batcher:
    """A continuously batched generation server over one model, run by a background thread.

    slots: requests decoded together; max_prompt_tokens: the longest prompt taken (rounded up to its
    bucket); max_new_tokens: the most tokens one request may ask for. The cache holds
    bucket(max_prompt_tokens) + max_new_tokens positions per slot. max_waiting: requests queued for a
    slot before `submit` refuses more (None: unbounded). steps_per_call: the most decode steps one device call
    runs for unwatched requests (`generate`'s). greedy_programs: all-greedy batches get programs of their own,
    without the sampling tiers, which compile several times faster: for a batcher that compiles on demand
    (SizedBatcher) rather than at warm-up (a server, whose warm-up compiles the sampling ones only).
    """

    def __init__(self, model: Qwen, stop_ids: list[int], pad_id: int, *, slots: int = 8,
                 max_prompt_tokens: int = 1024, max_new_tokens: int = 512, max_waiting: int | None = 256,
                 prefills_per_step: int = 4, steps_per_call: int = STEPS_PER_CALL, greedy_programs: bool = False,
                 cache_dtype=None, mesh=None):
        if min(slots, max_prompt_tokens, max_new_tokens, prefills_per_step, steps_per_call) < 1:
            raise ValueError("slots, max_prompt_tokens, max_new_tokens, prefills_per_step and steps_per_call "
                             "must be positive")
        self.graphdef, params = nnx.split(model)
        self.params = in_compute_dtype(params, model.runtime.dtype)
        self.config = model.config
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.pad_id = pad_id
        self.num_slots = slots
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self.max_len = bucket(max_prompt_tokens) + max_new_tokens
        self.max_waiting, self.prefills_per_step, self.steps_per_call = max_waiting, prefills_per_step, steps_per_call
        self.greedy_programs = greedy_programs
        self.cache_dtype = jnp.dtype(cache_dtype or model.runtime.dtype)
        self.mesh = mesh
        self.compilations = 0  # programs traced (decode step, slot release, prefills by prompt count and bucket)
        self.steps = 0  # decode steps run (one device call may run several)
        self.peak_active = 0  # most slots decoding at once
        self.admitted = 0  # requests prefilled into a slot
        self.finished = collections.Counter()  # requests ended, by Finished.reason
        self._prefill = functools.lru_cache(maxsize=None)(self._build_prefill)  # by (rows, width, sampled)
        self._step = functools.lru_cache(maxsize=None)(self._build_step)  # by sampled
        self._release = self._build_release()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._active: list[Ticket | None] = [None] * slots
        self._freed: list[int] = []  # slots freed since the last device call, their settings not yet reset
        self._wake = threading.Condition()
        self._closed = False
        with self._mesh():
            self._slots = self._empty_slots()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    # ---- the callers' side -------------------------------------------------------------------------

    def submit(self, prompt: list[int], max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
               *, frequency_penalty: float = 0.0, presence_penalty: float = 0.0, logprobs: bool = False,
               deliver: Callable[[int | Finished], None] | None = None,
               logit_bias: dict[int, float] | None = None) -> Ticket:
        """Queue a request; raises BatcherError when it cannot be taken (nothing is queued then).
        logit_bias: {token id: value added to its logit} (OpenAI's field), at most MAX_LOGIT_BIAS entries."""
        self._check(prompt, max_new_tokens, logit_bias or {})
        ticket = Ticket(list(prompt), max_new_tokens, sampling, frequency_penalty, presence_penalty, logprobs, deliver,
                        logit_bias)
        self._enqueue([ticket])
        return ticket

    def load_weights(self, model: Qwen) -> None:
        """Decode with `model`'s weights from the next request on: the same architecture, dtype and shardings,
        so the compiled programs are reused (a GRPO trainer's policy between rollouts). Call it while no
        request runs; anything else is a ValueError."""
        graphdef, params = nnx.split(model)
        if graphdef != self.graphdef:
            raise ValueError("load_weights: the model is not the one this batcher was built for")
        params = in_compute_dtype(params, model.runtime.dtype)
        old, new = jax.tree.map(jnp.shape, self.params), jax.tree.map(jnp.shape, params)
        if old != new:
            raise ValueError("load_weights: the weights' shapes differ from the batcher's")
        if any(self._active) or self._waiting:
            raise ValueError("load_weights: requests are running")
        self.params = params

    def generate(self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingParams = SamplingParams()
                 ) -> list[list[int]]:
        """Blocking: each prompt's generated tokens (without the stop token). The prompts are queued together
        (refused together, if one cannot be taken) and decode together as the slots allow. Prompt i samples
        with `sampling` under its own seed, prompt_seed(sampling.seed, i), so a call's tokens depend on its
        seed alone, not on the slot count or on what else runs."""
        for prompt in prompts:
            self._check(prompt, max_new_tokens, {})
        tickets = [Ticket(list(p), max_new_tokens, dataclasses.replace(sampling, seed=prompt_seed(sampling.seed, i)),
                          watched=False) for i, p in enumerate(prompts)]
        self._enqueue(tickets)
        results = [ticket.result() for ticket in tickets]
        for _, finished in results:
            if finished.reason not in ("stop", "length"):
                raise BatcherError(finished.error or f"the request was {finished.reason} (the batcher shut down)")
        return [tokens for tokens, _ in results]

    def stream(self, prompt: list[int], max_new_tokens: int, sampling: SamplingParams = SamplingParams()
               ) -> Iterator[int]:
        """One prompt's generated tokens as they are chosen (the terminal chat); leaving early cancels it."""
        ticket = self.submit(prompt, max_new_tokens, sampling)
        try:
            for event in ticket.events():
                if isinstance(event, Finished):
                    if event.reason == "error":
                        raise BatcherError(event.error)
                    return
                yield event
        finally:
            ticket.cancel()  # a no-op once it has finished

    def _check(self, prompt: list[int], max_new_tokens: int, logit_bias: dict[int, float]) -> None:
        if not prompt:
            raise BatcherError("the prompt has no tokens")
        if len(prompt) > self.max_prompt_tokens:
            raise BatcherError(f"the prompt has {len(prompt)} tokens; this server takes at most "
                               f"{self.max_prompt_tokens}")
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise BatcherError(f"max_new_tokens must be between 1 and {self.max_new_tokens}, not {max_new_tokens}")
        self._check_logit_bias(logit_bias)

    def _enqueue(self, tickets: list[Ticket]) -> None:
        """Queue tickets at once: the scheduler admits them in one go when it is idle."""
        with self._wake:
            if self._closed:
                raise BatcherError("the batcher is shut down")
            if self.max_waiting is not None and len(self._waiting) + len(tickets) > self.max_waiting:
                raise BatcherError(f"{len(self._waiting)} requests already wait for a slot; try again later")
            self._waiting.extend(tickets)
            self._wake.notify()

    def _check_logit_bias(self, bias: dict[int, float]) -> None:
        if len(bias) > MAX_LOGIT_BIAS:
            raise BatcherError(f"logit_bias has {len(bias)} entries; at most {MAX_LOGIT_BIAS} are taken")
        vocab = self.config.vocab_size
        for token, value in bias.items():
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < vocab:
                raise BatcherError(f"logit_bias: token {token!r} is not a token id (0 to {vocab - 1})")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
                raise BatcherError(f"logit_bias: token {token}'s bias {value!r} is not a finite number")

    def warmup(self) -> None:
        """Compile the decode step and every prompt bucket now, so no request waits on a compilation.
        Call it before serving: its requests are not clients', so the counts `load` reports (and /health
        shows) start from zero after it. Safe then: its last request's counts are in before its result."""
        width = MIN_BUCKET
        while True:
            self.submit([self.pad_id] * min(width, self.max_prompt_tokens), 1).result()
            if width >= self.max_prompt_tokens:
                break
            width *= 2
        self.submit([self.pad_id], 2).result()
        with self._wake:
            self.admitted = self.steps = self.peak_active = 0
            self.finished.clear()

    @property
    def load(self) -> dict:
        """Requests decoding now and waiting for a slot, and counts since start: requests admitted to a slot,
        requests ended by reason, decode steps."""
        with self._wake:
            return {"active": sum(t is not None for t in self._active), "waiting": len(self._waiting),
                    "slots": self.num_slots, "admitted": self.admitted, "finished": dict(self.finished),
                    "steps": self.steps}

    def close(self) -> None:
        """Stop the scheduler; requests still queued or decoding finish as cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=60)

    # ---- the scheduler thread ----------------------------------------------------------------------

    def _run(self) -> None:
        with self._mesh():
            while True:
                try:  # before the scheduler may sleep: idle slots keep no request's settings
                    self._release_freed()
                except Exception as e:
                    log.exception("releasing slots failed")
                    self._reset(e)
                with self._wake:
                    while not self._closed and not self._waiting and not any(self._active):
                        self._wake.wait()
                    if self._closed:
                        break
                    busy = any(self._active)
                    admit = []
                    while self._waiting and len(admit) < (self.prefills_per_step if busy else self.num_slots):
                        ticket = self._waiting.popleft()
                        if ticket.cancelled:
                            self._finish(ticket, Finished("cancelled"))
                        else:
                            admit.append(ticket)
                self._drop_cancelled()
                leftover = self._admit(admit)
                if leftover:
                    with self._wake:
                        self._waiting.extendleft(reversed(leftover))
                if any(self._active):
                    self._decode()
            for ticket in [t for t in self._active if t is not None] + list(self._waiting):
                self._finish(ticket, Finished("cancelled"))

    def _admit(self, tickets: list[Ticket]) -> list[Ticket]:
        """Prefill tickets into free slots; returns those that found no free slot. A blocking generate's
        tickets (unwatched) are prefilled together, one batch that reads the weights once for all of them; a
        watched one alone, so a server compiles one prefill per prompt bucket (all of them at warm-up) and
        each request's first token waits for its own prompt only."""
        free = [i for i, t in enumerate(self._active) if t is None]
        taken, leftover = tickets[: len(free)], tickets[len(free):]
        unwatched = [t for t in taken if not t.watched]
        for group in [[t] for t in taken if t.watched] + ([unwatched] if unwatched else []):
            slots, free = free[: len(group)], free[len(group):]
            try:
                firsts = self._prefill_slots(slots, group)
            except Exception as e:  # a failed prefill fails its requests, not the server
                log.exception("prefill failed")
                for ticket in group:
                    self._finish(ticket, Finished("error", f"{type(e).__name__}: {e}"))
                if self._slots.cache.k.is_deleted():  # the state was donated to the failed call
                    self._reset(e)
                continue
            for slot, ticket, first in zip(slots, group, firsts):
                self._active[slot] = ticket
                self.admitted += 1
                self._accept(slot, *first)
        return leftover

    def _prefill_slots(self, slots: list[int], tickets: list[Ticket]) -> list[tuple[int, tuple | None]]:
        """Prefill each ticket's prompt into its slot in one device call: (first token, its logprob entry or
        None) per ticket."""
        self._release_freed()  # first: a slot freed just now may be the one a request takes
        padded = left_pad([t.prompt for t in tickets], self.pad_id, bucketed=True)
        rows = padded.tokens.shape[0]
        filler = rows - len(tickets)  # the rows left_pad adds to reach a power of two: they write nowhere
        # settings and biases are stacked on the host: one transfer each with the call, not a device op per row
        sampling = [RowSampling.of(t.sampling, t.frequency_penalty, t.presence_penalty) for t in tickets]
        sampling = jax.tree.map(lambda *row: np.stack(row), *sampling, *[RowSampling.of(SamplingParams())] * filler)
        bias = [LogitBias.of(t.logit_bias, MAX_LOGIT_BIAS) for t in tickets] + [LogitBias.of({}, MAX_LOGIT_BIAS)] * filler
        bias = jax.tree.map(lambda *row: np.stack(row), *bias)
        keys = jnp.stack([jax.random.PRNGKey(t.sampling.seed) for t in tickets] + [jax.random.PRNGKey(0)] * filler)
        targets = jnp.asarray(slots + [self.num_slots] * filler, jnp.int32)  # out of range: the write is dropped
        run = self._prefill(*padded.tokens.shape, self._sampled(tickets))
        self._slots, (token, chosen, top_ids, top) = run(self.params, self._slots, padded, targets, sampling, bias,
                                                         keys)
        token = np.asarray(token)
        if any(t.want_logprobs for t in tickets):
            chosen, top_ids, top = np.asarray(chosen), np.asarray(top_ids), np.asarray(top)
        return [(int(token[i]), _logprob_entry(chosen[i], top_ids[i], top[i]) if t.want_logprobs else None)
                for i, t in enumerate(tickets)]

    def _decode(self) -> None:
        active = np.array([t is not None for t in self._active])
        left = np.array([t.max_new_tokens - len(t.tokens) if t is not None else 0 for t in self._active], np.int32)
        self.peak_active = max(self.peak_active, int(active.sum()))
        try:
            self._release_freed()
            report = any(t is not None and t.want_logprobs for t in self._active)
            self._slots, ran, (tokens, chosen, top_ids, top) = self._step(self._sampled(self._active))(
                self.params, self._slots, jnp.asarray(active), jnp.asarray(left), jnp.int32(self._steps_this_call()),
                jnp.asarray(report))
            ran, tokens = int(ran), np.asarray(tokens)
            if report:
                chosen, top_ids, top = np.asarray(chosen), np.asarray(top_ids), np.asarray(top)
        except Exception as e:  # fail the requests in flight, keep serving
            log.exception("decode step failed")
            self._reset(e)
            return
        self.steps += ran
        for step in range(ran):
            for slot, ticket in enumerate(self._active):  # a ticket finished at an earlier step has left its slot
                if ticket is not None:
                    entry = (_logprob_entry(chosen[step, slot], top_ids[step, slot], top[step, slot])
                             if ticket.want_logprobs else None)
                    self._accept(slot, int(tokens[step, slot]), entry)

    def lowered_decode(self, sampled: bool = False):
        """The decode program for this batcher's state, lowered (not run): what its compiled form contains is
        how the tests and benchmarks see that a step converts no weights and copies no cache."""
        n = self.num_slots
        spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)  # noqa: E731
        with self._mesh():
            return self._step(sampled).lower(
                jax.tree.map(spec, self.params), jax.tree.map(spec, self._slots), jnp.zeros((n,), bool),
                jnp.zeros((n,), jnp.int32), jnp.int32(1), jnp.bool_(False))

    def _sampled(self, tickets: list[Ticket | None]) -> bool:
        """Whether the program for these tickets must sample: always, unless greedy_programs."""
        return not self.greedy_programs or any(t is not None and not t.sampling.greedy for t in tickets)

    def _steps_this_call(self) -> int:
        """Decode steps the next device call may run: one while someone watches tokens arrive (a stream, a
        server's client) or a waiting request could take a free slot at the next step; else steps_per_call."""
        if any(t is not None and t.watched for t in self._active):
            return 1
        with self._wake:
            joinable = bool(self._waiting) and None in self._active
        return 1 if joinable else self.steps_per_call

    def _accept(self, slot: int, token: int, logprobs=None) -> None:
        """A slot's newly chosen token: deliver it, or finish the request."""
        ticket = self._active[slot]
        if ticket.cancelled:
            finished = Finished("cancelled")
        elif token in self.stop_ids:
            finished = Finished("stop")
        else:
            if logprobs is not None:
                ticket.logprobs.append(logprobs)
            ticket._emit(token)
            finished = Finished("length") if len(ticket.tokens) >= ticket.max_new_tokens else None
        if finished is not None:
            self._finish(ticket, finished)
            self._free(slot)

    def _free(self, slot: int) -> None:
        self._active[slot] = None
        self._freed.append(slot)

    def _release_freed(self) -> None:
        """Reset the freed slots' sampling settings and logit bias to neutral, in one device call."""
        if not self._freed:
            return
        freed = np.zeros(self.num_slots, bool)
        freed[self._freed] = True
        self._freed.clear()
        self._slots = self._release(self._slots, jnp.asarray(freed))

    def _finish(self, ticket: Ticket, finished: Finished) -> None:
        self.finished[finished.reason] += 1
        ticket._emit(finished)

    def _reset(self, error: Exception) -> None:
        """Fail every request in a slot and start from empty slots (after a device call failed)."""
        for slot, ticket in enumerate(self._active):
            if ticket is not None:
                self._finish(ticket, Finished("error", f"{type(error).__name__}: {error}"))
                self._active[slot] = None
        self._freed.clear()  # empty slots are neutral already
        self._slots = self._empty_slots()

    def _drop_cancelled(self) -> None:
        for slot, ticket in enumerate(self._active):
            if ticket is not None and ticket.cancelled:
                self._finish(ticket, Finished("cancelled"))
                self._free(slot)

    # ---- the device programs -----------------------------------------------------------------------

    def _mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _empty_slots(self) -> Slots:
        cfg, n = self.config, self.num_slots
        shape = (cfg.num_layers, n, self.max_len, cfg.num_kv_heads, cfg.head_dim)
        def zeros():  # a buffer of its own for every field: donation consumes each once
            return jnp.zeros((n,), jnp.int32)

        return Slots(
            cache=KVCache(jnp.zeros(shape, self.cache_dtype), jnp.zeros(shape, self.cache_dtype)),
            key_valid=jnp.zeros((n, self.max_len), bool), write_index=zeros(), position=zeros(), token=zeros(),
            seen=jnp.zeros((n, cfg.vocab_size), bool), counts=jnp.zeros((n, cfg.vocab_size), jnp.int32),
            sampling=RowSampling.neutral(n), bias=LogitBias.none(n, MAX_LOGIT_BIAS),
            keys=jnp.zeros((n, 2), jnp.uint32),
        )

    def _build_prefill(self, rows: int, width: int, sampled: bool):
        graphdef, cfg = self.graphdef, self.config

        @functools.partial(jax.jit, donate_argnums=(1,))
        def prefill(params, s: Slots, padded, targets, sampling: RowSampling, bias: LogitBias, keys):
            """Run `rows` left-padded prompts into fresh cache rows, choose each one's first token, and write
            row r's state into slot targets[r] (an out-of-range target: dropped, for filler rows)."""
            self.compilations += 1  # runs at trace time only
            model = nnx.merge(graphdef, params)
            shape = (cfg.num_layers, rows, self.max_len, cfg.num_kv_heads, cfg.head_dim)
            cache = KVCache(jnp.zeros(shape, self.cache_dtype), jnp.zeros(shape, self.cache_dtype))
            key_valid = jnp.zeros((rows, self.max_len), bool).at[:, :width].set(padded.valid)
            logits, cache = model.decode_step(padded.tokens, padded.positions, cache, 0, key_valid)
            row = jnp.arange(rows)
            seen = jnp.zeros((rows, cfg.vocab_size), bool).at[row[:, None], padded.tokens].max(padded.valid)
            counts = jnp.zeros((rows, cfg.vocab_size), jnp.int32)
            split = jax.vmap(jax.random.split)(keys)
            token = choose_rows(logits, seen, counts, sampling, split[:, 1], bias, sampled)
            reported = _logprobs(logits, token, jnp.bool_(True))  # once per prompt

            def put(all_slots, new, axis=0):  # rows into their target slots along the slots axis
                index = (slice(None),) * axis + (targets,)
                return all_slots.at[index].set(new.astype(all_slots.dtype), mode="drop")

            s = Slots(
                cache=KVCache(put(s.cache.k, cache.k, 1), put(s.cache.v, cache.v, 1)),
                key_valid=put(s.key_valid, key_valid), write_index=put(s.write_index, jnp.full((rows,), width)),
                position=put(s.position, padded.positions[:, -1] + 1), token=put(s.token, token),
                seen=put(s.seen, seen.at[row, token].set(True)), counts=put(s.counts, counts.at[row, token].add(1)),
                sampling=jax.tree.map(put, s.sampling, sampling), bias=jax.tree.map(put, s.bias, bias),
                keys=put(s.keys, split[:, 0]),
            )
            return s, reported

        return prefill

    def _build_step(self, sampled: bool):
        graphdef, last, most = self.graphdef, self.max_len - 1, self.steps_per_call
        stop_ids = jnp.asarray(sorted(self.stop_ids), jnp.int32)

        @functools.partial(jax.jit, donate_argnums=(1,))
        def decode(params, s: Slots, active, left, steps, report):
            """Up to `steps` (at most steps_per_call) decode steps of the active slots, ending after the first
            step in which one of them finishes (a stop token, or the last of the `left` [slots] tokens it may
            still produce): the host frees it, and the next call has no finished slot decoding in vain.
            Returns the state, the steps run and each step's _logprobs, [steps_per_call, slots, ...]."""
            self.compilations += 1
            model = nnx.merge(graphdef, params)
            slots = jnp.arange(self.num_slots)
            grow = active.astype(jnp.int32)

            def step(s: Slots):
                # idle slots compute on stale state and are ignored; their write index stays put (never past the
                # cache)
                write = s.write_index
                key_valid = s.key_valid.at[slots, write].set(active | s.key_valid[slots, write])
                logits, cache = model.decode_step(s.token[:, None], s.position[:, None], s.cache, write, key_valid)
                split = jax.vmap(jax.random.split)(s.keys)
                token = choose_rows(logits, s.seen, s.counts, s.sampling, split[:, 1], s.bias, sampled)
                reported = _logprobs(logits, token, report)
                s = s._replace(
                    cache=cache, key_valid=key_valid, write_index=jnp.minimum(s.write_index + grow, last),
                    position=s.position + grow, token=token, seen=s.seen.at[slots, token].max(active),
                    counts=s.counts.at[slots, token].add(grow), keys=split[:, 0],
                )
                return s, reported

            def go_on(carry):
                ran, _, _, finished = carry
                return (ran < steps) & ~finished

            def one_more(carry):
                ran, s, out, _ = carry
                s, reported = step(s)
                out = jax.tree.map(lambda all_steps, this: all_steps.at[ran].set(this), out, reported)
                token = reported[0]
                stopped = jnp.any(token[:, None] == stop_ids, axis=-1)
                finished = jnp.any(active & (stopped | (ran + 1 >= left)))
                return ran + 1, s, out, finished

            n = self.num_slots
            out = (jnp.zeros((most, n), jnp.int32), jnp.zeros((most, n), jnp.float32),
                   jnp.zeros((most, n, TOP_LOGPROBS), jnp.int32), jnp.zeros((most, n, TOP_LOGPROBS), jnp.float32))
            ran, s, out, _ = jax.lax.while_loop(go_on, one_more, (jnp.int32(0), s, out, jnp.bool_(False)))
            return s, ran, out

        return decode

    def _build_release(self):
        @functools.partial(jax.jit, donate_argnums=(0,))
        def release(s: Slots, freed):
            self.compilations += 1
            neutral = (RowSampling.neutral(self.num_slots), LogitBias.none(self.num_slots, MAX_LOGIT_BIAS))

            def reset(current, clean):
                return jnp.where(freed.reshape((-1,) + (1,) * (current.ndim - 1)), clean, current)

            sampling, bias = jax.tree.map(reset, (s.sampling, s.bias), neutral)
            return s._replace(sampling=sampling, bias=bias)

        return release


def in_compute_dtype(params, dtype):
    """The weights as the engine keeps them: floating-point leaves in the compute dtype.

    The model casts every weight to its compute dtype where it uses it, so casting once here computes exactly the
    same, while a decode step that read float32 master weights would read twice the bytes and convert every
    weight on every token (the step is bound by reading the weights)."""
    dtype = jnp.dtype(dtype)

    def cast(leaf):
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype else leaf

    return jax.tree.map(cast, params)


def prompt_seed(seed: int, index: int) -> int:
    """The seed `generate` gives its prompt number `index`: the call's seed itself for the first (one prompt
    samples as one request with that seed does), a hash of (seed, index) for the others, so that neither
    neighbouring prompts nor neighbouring seeds share their noise."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, index]).generate_state(1)[0] % 2**31)


def _logprobs(logits: jax.Array, token: jax.Array, report: jax.Array):
    """(token [b], its log-probability [b], the top alternatives' ids [b, k] and log-probabilities [b, k]);
    zeros unless `report` (a traced bool, so both cases share one program and only one runs)."""
    b = logits.shape[0]

    def compute(logits):
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        top, top_ids = jax.lax.top_k(logprobs, TOP_LOGPROBS)
        return jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0], top_ids.astype(jnp.int32), top

    def skip(logits):
        return (jnp.zeros((b,), jnp.float32), jnp.zeros((b, TOP_LOGPROBS), jnp.int32),
                jnp.zeros((b, TOP_LOGPROBS), jnp.float32))

    return (token, *jax.lax.cond(report, compute, skip, logits))


def _logprob_entry(chosen, top_ids, top) -> tuple[float, list[tuple[int, float]]]:
    return float(chosen), [(int(i), float(v)) for i, v in zip(np.asarray(top_ids), np.asarray(top))]
