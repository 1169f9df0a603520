"""TRL's own loss code run on fixed inputs, as the reference the preference and GRPO losses are compared with.

The trainers are not constructed (that would need datasets, a tokenizer and a run directory): an
instance is made without __init__ and given the attributes its loss method reads, so the numbers
come from TRL's `_compute_loss` / `get_batch_loss_metrics` themselves, model forward included.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np


class RecordingAccelerator:
    """A one-process accelerate stand-in that keeps what the loss code gathers, in order."""

    device = "cpu"
    num_processes = 1
    sync_gradients = True
    is_main_process = True

    def __init__(self):
        self.gathered = []

    def gather(self, x):
        self.gathered.append(x.detach().clone())
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


def hf_model(path, fused_outputs=("log_probs",)):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    add_fused_lm_head(model, outputs=fused_outputs)
    model.train()  # the loss code reads the mode; these models have no dropout
    return model


def grad_norm(model) -> float:
    import torch

    return float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None)))


def _instance(cls, **attributes):
    trainer = cls.__new__(cls)
    trainer.__dict__.update(_metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                            accelerator=RecordingAccelerator(), aux_loss_enabled=False, **attributes)
    return trainer


def dpo(policy_path, reference_path, pairs, kind: str, beta: float) -> dict:
    """TRL DPOTrainer's loss for `kind` (sigmoid, ipo, hinge): loss, per-pair log-probs, grad norm."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    model = hf_model(policy_path, ("log_probs", "entropy", "mean_logits", "is_top1"))
    reference = hf_model(reference_path)
    trainer = _instance(
        DPOTrainer, model=model, ref_model=reference, precompute_ref_logps=False, ld_alpha=None,
        f_divergence_type="reverse_kl", loss_types=[kind], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    inputs = DataCollatorForPreference(pad_token_id=0)(
        [{"prompt_ids": list(p), "chosen_ids": list(c), "rejected_ids": list(r)} for p, c, r in pairs])
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    loss.backward()
    gathered = trainer.accelerator.gathered  # ..., chosen logps, rejected logps (the last two gathered)
    return {"loss": float(loss.detach()), "chosen": gathered[-2].numpy(), "rejected": gathered[-1].numpy(),
            "grad_norm": grad_norm(model)}


def _paired_batch(pairs):
    """The chosen_/rejected_ input_ids, attention_mask and labels (prompt -100) ORPO and CPO read."""
    import torch

    batch = {}
    for side, index in (("chosen", 1), ("rejected", 2)):
        docs = [list(pair[0]) + list(pair[index]) for pair in pairs]
        width = max(map(len, docs))
        ids = np.zeros((len(pairs), width), np.int64)
        mask = np.zeros_like(ids)
        labels = np.full_like(ids, -100)
        for row, (pair, doc) in enumerate(zip(pairs, docs)):
            ids[row, :len(doc)] = doc
            mask[row, :len(doc)] = 1
            labels[row, len(pair[0]):len(doc)] = pair[index]
        batch.update({f"{side}_input_ids": torch.as_tensor(ids), f"{side}_attention_mask": torch.as_tensor(mask),
                      f"{side}_labels": torch.as_tensor(labels)})
    return batch


def orpo(policy_path, pairs, beta: float) -> dict:
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    model = hf_model(policy_path)
    trainer = _instance(ORPOTrainer, is_encoder_decoder=False, padding_value=0, beta=beta)
    loss, metrics = trainer.get_batch_loss_metrics(model, _paired_batch(pairs))
    loss.backward()
    return {"loss": float(loss.detach()), "nll": metrics["nll_loss"], "grad_norm": grad_norm(model)}


def simpo(policy_path, pairs, beta: float, gamma: float) -> dict:
    """CPOTrainer with loss_type simpo and cpo_alpha 0: SimPO alone."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    model = hf_model(policy_path)
    trainer = _instance(CPOTrainer, is_encoder_decoder=False, padding_value=0, pad_token_id=0, beta=beta,
                        loss_type="simpo", simpo_gamma=gamma, cpo_alpha=0.0, alpha=0.0, label_smoothing=0.0)
    loss, _ = trainer.get_batch_loss_metrics(model, _paired_batch(pairs))
    loss.backward()
    return {"loss": float(loss.detach()), "grad_norm": grad_norm(model)}


def grpo(policy_path, prompts, completions, completion_mask, old_logps, advantages, *, kind: str,
         epsilon_low: float, epsilon_high: float, beta: float = 0.0, ref_logps=None,
         max_completion_length: int | None = None) -> dict:
    """TRL GRPOTrainer._compute_loss on fixed completions, old log-probs and advantages (one process,
    no accumulation): loss, grad norm and the per-token log-probs it scored."""
    import torch
    from trl.trainer.grpo_trainer import GRPOTrainer

    model = hf_model(policy_path, ("log_probs", "entropy"))
    n, t = completions.shape
    trainer = _instance(
        GRPOTrainer, model=model, loss_type=kind, epsilon_low=epsilon_low, epsilon_high=epsilon_high, beta=beta,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        use_vllm=False, vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
        max_completion_length=max_completion_length or t, current_gradient_accumulation_steps=1,
        temperature=1.0, _step=0, _current_train_step_time=0.0,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1))
    inputs = {
        "prompt_ids": torch.as_tensor(prompts, dtype=torch.long),
        "prompt_mask": torch.ones(prompts.shape, dtype=torch.long),
        "completion_ids": torch.as_tensor(completions, dtype=torch.long),
        "completion_mask": torch.as_tensor(completion_mask, dtype=torch.long),
        "advantages": torch.tensor(advantages, dtype=torch.float32),
        "old_per_token_logps": torch.as_tensor(old_logps, dtype=torch.float32),
        "num_items_in_batch": torch.as_tensor(float(np.sum(completion_mask))),
    }
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = torch.as_tensor(ref_logps, dtype=torch.float32)
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return {"loss": float(loss.detach()), "grad_norm": grad_norm(model)}
