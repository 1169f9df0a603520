"""The evaluation tasks' and modes' names, with no imports: `evaluation.config` builds its fields from them and the
CLI's parser offers them as choices without loading JAX (a new task is one edit here)."""

PAPER_TASKS = ("mcq", "cloze", "dialog")  # the Diabetica paper's benchmarks
CLINICAL_TASKS = ("consult", "educate", "summarize")  # the paper's clinical roles, rated by the judge (clinical.py)
TEXT_TASKS = ("perplexity",)  # held-out text scored token by token, no generation (perplexity.py)
HARNESS_TASKS = ("lm_eval",)  # any lm-evaluation-harness task, on the engine (harness.py)
TASKS = PAPER_TASKS + CLINICAL_TASKS + TEXT_TASKS + HARNESS_TASKS
MODES = ("own", "faithful")
