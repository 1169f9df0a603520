"""The GRPO stage's batches: group rollouts of the current policy on the items, with their verifiable rewards.

Each step takes `data.global_batch / grpo.group_size` items (a seeded permutation per epoch, a pure
function of the step), renders them with the evaluation's own prompts, and samples `group_size`
completions of each from the continuous batcher (generate/batcher.py) running the policy's current
weights. Completion i of step s samples under a seed of (data.seed, s, i) alone, so the rollouts do
not depend on how the batcher schedules them, and a resumed run (same weights at the same step)
draws the same ones. Rows are prompt + completion (its `<|im_end|>` included when it stopped), loss
on the completion. Every completion, its answer and reward go to RUN_DIR/rollouts.jsonl.
"""

from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from diabetica_jax.configuration import ConfigFileError, InputError
from diabetica_jax.data.batch import Batch
from diabetica_jax.evaluation.data import EvalDataError, load_items
from diabetica_jax.evaluation.prompts import OWN
from diabetica_jax.evaluation.tasks import conversation
from diabetica_jax.generate.batcher import Batcher, prompt_seed
from diabetica_jax.generate.chat import chat_prompt, stop_and_pad
from diabetica_jax.generate.sampling import SamplingParams
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.metrics import _supersede_after
from diabetica_jax.train.rewards import answer_of, judged, reward

log = logging.getLogger(__name__)

ROLLOUTS_FILE = "rollouts.jsonl"
END_OF_TURN = "<|im_end|>"


class RolloutBatch(NamedTuple):
    """One step's completions as rows [grad_accum, rows, seq], and each row's reward [grad_accum, rows]."""

    batch: Batch
    rewards: np.ndarray


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed % 2**32, step]).generate_state(1)[0] % 2**31)


class RolloutFeed:
    """Rollouts of the policy the loop hands over (`on_policy`: Trainer.run passes the state to `next`)."""

    iterator = None  # the order and the sampling are functions of the step and the weights: nothing to save
    on_policy = True

    def __init__(self, cfg: TrainConfig, rows: range, tokenizer, vocab: int, run_dir: Path | None):
        g = cfg.grpo
        self.cfg, self.rows, self.tokenizer, self.run_dir = cfg, rows, tokenizer, run_dir
        try:
            self.items = load_items(g.items, g.task)
        except (EvalDataError, ValueError) as e:
            raise InputError(f"grpo.items: {e}") from e
        end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if end is None or end == tokenizer.unk_token_id:
            raise ConfigFileError(f"grpo: the tokenizer has no {END_OF_TURN}; rollouts need a ChatML chat template")
        self.end_of_turn, self.pad_id = end, stop_and_pad(tokenizer)[1]
        template = OWN.mcq if g.task == "mcq" else OWN.cloze
        self.prompts = [chat_prompt(tokenizer, conversation(OWN, template.format(question=item.question)))
                        for item in self.items]
        room = cfg.data.seq_len - g.max_new_tokens
        too_long = [item.id for item, p in zip(self.items, self.prompts) if len(p) > room]
        if too_long:  # a prompt is never cut: the question would lose its options
            raise InputError(f"grpo.items={g.items}: item {too_long[0]} (and {len(too_long) - 1} more) has a "
                             f"prompt longer than data.seq_len - grpo.max_new_tokens = {room} tokens")
        top = max(max(p) for p in self.prompts)
        if top >= vocab:
            raise ConfigFileError(f"grpo.items: token id {top} is outside the model's vocabulary of {vocab}; "
                                  "the tokenizer does not match the model")
        self.per_step = cfg.data.global_batch // g.group_size
        if len(self.items) < self.per_step:
            raise InputError(f"grpo.items={g.items}: {len(self.items)} items, fewer than the {self.per_step} one "
                             f"step rolls out (data.global_batch / grpo.group_size)")
        self.steps_per_epoch = len(self.items) // self.per_step  # each epoch's permutation leaves out a different rest
        self.total_steps = self.steps_per_epoch * cfg.data.epochs
        self.sampling = SamplingParams(temperature=g.temperature, top_p=g.top_p)
        self.judge = None
        if g.judge_weight > 0:  # its verdicts cached on disk: a resumed run's rollouts are rated the same
            from diabetica_jax.llm import make_backend

            cache = (run_dir or Path(tempfile.mkdtemp(prefix="grpo-judge-"))) / "cache" / "judge"
            self.judge = make_backend(g.judge, cache)
        self.batcher: Batcher | None = None
        self.model_of = None  # state -> the policy model: set by the loop
        self.mesh = None

    def resume_at(self, step: int) -> None:
        """A run resumed at `step` redoes the steps after it: their rollout records move aside."""
        if self.run_dir is not None:
            _supersede_after(self.run_dir / ROLLOUTS_FILE, step)

    def indices(self, step: int) -> np.ndarray:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if epoch >= self.cfg.data.epochs:
            raise StopIteration
        order = np.random.default_rng([self.cfg.data.seed, epoch]).permutation(len(self.items))
        return order[offset * self.per_step:(offset + 1) * self.per_step]

    def _engine(self, model, mesh) -> Batcher:
        if self.batcher is None:
            self.batcher = Batcher(model, [self.end_of_turn], self.pad_id, slots=self.cfg.data.global_batch,
                                   max_prompt_tokens=max(len(p) for p in self.prompts),
                                   max_new_tokens=self.cfg.grpo.max_new_tokens, max_waiting=None, mesh=mesh)
        else:
            self.batcher.load_weights(model)
        return self.batcher

    def rollout(self, step: int, model, mesh=None) -> tuple[np.ndarray, list[list[int]], list[dict]]:
        """(item indices, completions, log records) of step `step` under `model`."""
        g = self.cfg.grpo
        indices = self.indices(step)
        prompts = [self.prompts[i] for i in indices for _ in range(g.group_size)]
        engine = self._engine(model, mesh)
        seed = step_seed(self.cfg.data.seed, step)
        # one sampling seed per completion: prompt_seed(seed, i), as Batcher.generate gives them
        completions = engine.generate(prompts, g.max_new_tokens, SamplingParams(**{**vars(self.sampling), "seed": seed}))
        records = []
        for row, completion in enumerate(completions):
            item = self.items[indices[row // g.group_size]]
            text = self.tokenizer.decode(completion, skip_special_tokens=True)
            records.append({"step": step + 1, "item": item.id, "completion": row % g.group_size,
                            "seed": prompt_seed(seed, row), "text": text,
                            "answer": answer_of(g.task, item, text), "expected": item.answer,
                            "stopped": len(completion) < g.max_new_tokens,
                            "reward": reward(g.task, item, text, g.format_weight)})
        if self.judge is not None:
            items = [self.items[indices[row // g.group_size]] for row in range(len(records))]
            with ThreadPoolExecutor(max_workers=g.judge.concurrency) as pool:
                verdicts = list(pool.map(lambda r, item: judged(self.judge, g.task, item, r["text"], g.judge_weight),
                                         records, items))
            for record, verdict in zip(records, verdicts):
                record.update(verdict, reward=record["reward"] + verdict["judge_reward"])
        return indices, completions, records

    def rows_of(self, indices, completions) -> Batch:
        d, g = self.cfg.data, self.cfg.grpo
        fields = np.zeros((4, d.global_batch, d.seq_len), np.int32)
        tokens, loss_mask, segment_ids, positions = fields
        for row, completion in enumerate(completions):
            prompt = self.prompts[indices[row // g.group_size]]
            # a completion that ended before the limit ended on <|im_end|>, the only stop token: it is trained too
            reply = list(completion) + ([self.end_of_turn] if len(completion) < g.max_new_tokens else [])
            doc = prompt + reply
            tokens[row, :len(doc)] = doc
            loss_mask[row, len(prompt):len(doc)] = 1
            segment_ids[row, :len(doc)] = 1
            positions[row, :len(doc)] = np.arange(len(doc))
        shape = (d.grad_accum, d.global_batch // d.grad_accum, d.seq_len)
        return Batch(*(x.reshape(shape) for x in fields))

    def next(self, step: int, state) -> RolloutBatch:
        indices, completions, records = self.rollout(step, self.model_of(state), self.mesh)
        if self.run_dir is not None:
            with open(self.run_dir / ROLLOUTS_FILE, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        d = self.cfg.data
        rewards = np.asarray([r["reward"] for r in records], np.float32).reshape(d.grad_accum, -1)
        batch = self.rows_of(indices, completions)
        local = slice(self.rows.start, self.rows.stop)
        return RolloutBatch(Batch(*(x[:, local] for x in batch)), rewards[:, local])

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def rollout_layout(layout, sharding):
    """RolloutBatch of host rows -> global arrays (the rows through the run's BatchLayout)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    rewards_sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[:2]))

    def to_device(local: RolloutBatch) -> RolloutBatch:
        g = layout.global_shape(int(local.batch.tokens.shape[2]))
        return RolloutBatch(layout(local.batch),
                            jax.make_array_from_process_local_data(rewards_sharding, local.rewards, g[:2]))

    return to_device
