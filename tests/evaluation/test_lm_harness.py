"""lm-evaluation-harness with this engine as its model (`--model diabetica-jax`) against its own `hf` model on
the same tiny random Qwen2 (real Qwen2 vocabulary): every request's log-likelihood, rolling log-likelihood and
greedy reply; on one device and on an emulated mesh; and the Diabetica tasks it ships against `diabetica-jax eval`.
"""

import json

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")
pytest.importorskip("torch", reason="lm-eval's hf model is the reference: pip install -e '.[test]'")

from benchmark_files import DIABETICA  # noqa: E402
from hf_models import make_hf_checkpoint  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from diabetica_jax.cli import main  # noqa: E402
from diabetica_jax.evaluation import harness  # noqa: E402
from diabetica_jax.evaluation.config import EvalConfig, EvalModelSection, TaskSection  # noqa: E402
from diabetica_jax.evaluation.prompts import OWN  # noqa: E402
from diabetica_jax.evaluation.runner import evaluate  # noqa: E402
from diabetica_jax.hf import embedded_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow

MCQ = [
    {"question": "Which hormone lowers blood glucose?", "choices": ["insulin", "glucagon", "cortisol"], "answer": 0},
    {"question": "HbA1c reflects mean glucose over about", "choices": ["one day", "three months", "a year"],
     "answer": 1},
    {"question": "", "choices": ["Metformin", "Insulin"], "answer": 0},  # empty context: the prefix token
    {"question": "A fasting glucose of 7.0 mmol/L or more, measured twice in an adult without symptoms, "
                 "suggests", "choices": ["diabetes", "anaemia"], "answer": 0},  # longer than max_length
]
TEXTS = ["Type 1 diabetes is an autoimmune disease in which the immune system destroys the insulin-producing "
         "beta cells of the pancreas, so that insulin must be replaced for life.",
         "Metformin lowers hepatic glucose output."]
MAX_LENGTH = 24  # short, so the long MCQ context is cut and the first text needs several rolling windows


def _tasks(folder):
    (folder / "mcq.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MCQ), encoding="utf-8")
    (folder / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (folder / "mcq.yaml").write_text(f"""task: tiny_mcq
dataset_kwargs: {{data_files: {{test: {folder / 'mcq.jsonl'}}}}}
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc}}]
{common}""", encoding="utf-8")
    (folder / "text.yaml").write_text(f"""task: tiny_text
dataset_kwargs: {{data_files: {{test: {folder / 'text.jsonl'}}}}}
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: word_perplexity}}]
{common}""", encoding="utf-8")
    (folder / "gen.yaml").write_text(f"""task: tiny_gen
dataset_kwargs: {{data_files: {{test: {folder / 'mcq.jsonl'}}}}}
output_type: generate_until
doc_to_text: "{{{{question}}}} Answer:"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs: {{until: [" glucose", "."], max_gen_toks: 6, do_sample: false}}
metric_list: [{{metric: exact_match}}]
{common}""", encoding="utf-8")
    return ["tiny_mcq", "tiny_text", "tiny_gen"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-lm-eval")
    make_hf_checkpoint("qwen2_tied", path, vocab_size=151936, max_position_embeddings=256)
    embedded_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    return _tasks(folder), TaskManager(include_path=str(folder)), folder


def _run(model, model_args, tasks, **options):
    names, manager, _ = tasks
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=names, task_manager=manager,
                                   log_samples=True, device="cpu", batch_size=3, **options)


def _responses(result, task):
    return [s["resps"] for s in sorted(result["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def reference(checkpoint, tasks, monkeypatch_module):
    return _run("hf", f"pretrained={checkpoint},dtype=float32,max_length={MAX_LENGTH}", tasks)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        yield patch


def _assert_same(ours, theirs, abs_tol):
    for task in ("tiny_mcq", "tiny_text"):
        ours_ll = [[r[0] for r in doc] for doc in _responses(ours, task)]
        theirs_ll = [[r[0] for r in doc] for doc in _responses(theirs, task)]
        assert len(ours_ll) == len(theirs_ll) > 0
        for a, b in zip(ours_ll, theirs_ll):
            a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
            if task == "tiny_mcq":  # (log-likelihood, is_greedy) per choice
                assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=abs_tol)
                assert [x[1] for x in a] == [x[1] for x in b]
                assert all(x[0] < -1 for x in a)  # real scores, not zeros
            else:  # one rolling log-likelihood per text
                assert list(a) == pytest.approx(list(b), abs=abs_tol)
    assert ours["results"]["tiny_mcq"]["acc,none"] == theirs["results"]["tiny_mcq"]["acc,none"]
    assert ours["results"]["tiny_text"]["word_perplexity,none"] == pytest.approx(
        theirs["results"]["tiny_text"]["word_perplexity,none"], rel=1e-4)
    assert _responses(ours, "tiny_gen") == _responses(theirs, "tiny_gen")


def test_every_request_equals_lm_evals_hf_model(checkpoint, tasks, reference):
    ours = _run(harness.MODEL_NAME, f"pretrained={checkpoint},max_length={MAX_LENGTH}", tasks)
    _assert_same(ours, reference, 1e-4)
    first_text = TEXTS[0]
    assert len(embedded_tokenizer().encode(first_text)) > MAX_LENGTH  # two rolling windows or more were scored
    replies = [doc[0][0] for doc in _responses(ours, "tiny_gen")]
    assert all(" glucose" not in r and "." not in r for r in replies)  # cut at the stop strings
    assert any(r for r in replies)


def test_on_an_emulated_mesh_the_same(checkpoint, tasks, reference):
    ours = _run(harness.MODEL_NAME, f"pretrained={checkpoint},max_length={MAX_LENGTH},fsdp=2,tensor=2", tasks)
    _assert_same(ours, reference, 1e-4)


def test_diabetica_mcq_task_through_the_cli(checkpoint, tmp_path, monkeypatch_module):
    out = tmp_path / "results"
    metadata = json.dumps({"mcq_files": ["embedded:mini_mcq.csv"]})
    code = main(["lm-eval", "--model", "diabetica-jax", "--model_args", f"pretrained={checkpoint}",
                 "--tasks", "diabetica_mcq", "--metadata", metadata, "--limit", "4", "--output_path", str(out)])
    assert code == 0
    written = list(out.rglob("results_*.json"))
    assert len(written) == 1
    written = json.loads(written[0].read_text(encoding="utf-8"))
    assert written["n-samples"]["diabetica_mcq"]["effective"] == 4  # the embedded file's items, through --limit
    acc = written["results"]["diabetica_mcq"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and (acc * 4).is_integer()


def test_a_missing_benchmark_file_is_named(checkpoint, tmp_path, monkeypatch_module, capsys):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(Exception, match="nowhere.csv: benchmark file not found"):
        main(["lm-eval", "--model", "diabetica-jax", "--model_args", f"pretrained={checkpoint}",
              "--tasks", "diabetica_mcq", "--metadata", json.dumps({"mcq_files": [str(missing)]})])


@pytest.mark.shared
@pytest.mark.skipif(not (DIABETICA / "ZhiCheng_MCQ_A1.csv").is_file(),
                    reason=f"the paper's benchmark files are not at {DIABETICA} (set DIABETICA_BENCHMARKS)")
def test_a1_through_lm_eval_agrees_with_diabetica_eval(checkpoint, tmp_path, monkeypatch_module):
    """The A1 items, their letters scored by lm-eval's diabetica_mcq task and by `diabetica-jax eval`'s
    log-likelihood reading: the same letter for every item, the same accuracy."""
    n = 12
    a1 = DIABETICA / "ZhiCheng_MCQ_A1.csv"
    harnessed = lm_eval.simple_evaluate(
        model=harness.MODEL_NAME, model_args=f"pretrained={checkpoint}", tasks=["diabetica_mcq"],
        task_manager=TaskManager(include_path=str(harness.TASKS_DIR), metadata={"mcq_files": [str(a1)]}),
        limit=n, log_samples=True, apply_chat_template=True, system_instruction=OWN.system, batch_size=4)
    samples = sorted(harnessed["samples"]["diabetica_mcq"], key=lambda s: s["doc_id"])
    picked = [s["doc"]["letters"][int(np.argmax([r[0][0] for r in s["resps"]]))] for s in samples]

    cfg = EvalConfig(model=EvalModelSection(path=str(checkpoint)), tasks=[TaskSection("mcq", [str(a1)], limit=n)])
    evaluate(cfg, tmp_path / "eval", progress=False)
    report = json.loads((tmp_path / "eval" / "report_mcq.json").read_text(encoding="utf-8"))
    rows = report["items"]
    ours = [r["loglik_prediction"] for r in rows]
    assert len(ours) == len(picked) == n
    assert picked == ours
    assert harnessed["results"]["diabetica_mcq"]["acc,none"] == pytest.approx(
        sum(r["loglik_correct"] for r in rows) / n)


def test_eval_runs_lm_eval_tasks_on_local_data(checkpoint, tasks, reference, tmp_path, monkeypatch_module):
    """`task: lm_eval` in an eval suite (and so in a pipeline's general evaluation): the task YAMLs of a local
    folder, on the suite's own model, with the figures lm-eval's hf model gives."""
    folder = tasks[2]
    section = TaskSection("lm_eval", [str(folder)], lm_eval_tasks=["tiny_mcq", "tiny_text"])
    cfg = EvalConfig(model=EvalModelSection(path=str(checkpoint)), tasks=[section], batch_size=3)
    combined = evaluate(cfg, tmp_path / "eval", progress=False)
    report = json.loads((tmp_path / "eval" / "report_lm_eval.json").read_text(encoding="utf-8"))
    assert report["results"]["tiny_mcq"]["acc"] == reference["results"]["tiny_mcq"]["acc,none"]
    # without max_length 24 the texts fit one window: a perplexity of their own, finite
    assert report["results"]["tiny_text"]["word_perplexity"] > 1
    assert report["n_items"] == len(MCQ) + len(TEXTS) == len(report["items"])
    assert {row["task"] for row in report["items"]} == {"tiny_mcq", "tiny_text"}
    summary = (tmp_path / "eval" / "summary.md").read_text(encoding="utf-8")
    assert "| tiny_mcq | acc |" in summary
    from diabetica_jax.pipeline.run import headline_figures

    figures = headline_figures(combined["tasks"])
    assert figures["lm_eval_tiny_mcq_acc"] == report["results"]["tiny_mcq"]["acc"]


def test_unknown_lm_eval_task_stops_before_the_model_loads(tmp_path, monkeypatch_module):
    from diabetica_jax.evaluation.data import EvalDataError

    section = TaskSection("lm_eval", [], lm_eval_tasks=["tiny_mcq_nowhere"])
    cfg = EvalConfig(model=EvalModelSection(path=str(tmp_path / "no-model")), tasks=[section])
    with pytest.raises(EvalDataError, match="unknown to lm-eval: tiny_mcq_nowhere"):
        evaluate(cfg, tmp_path / "eval", progress=False)
    with pytest.raises(EvalDataError, match="nowhere: lm-eval task folder not found"):
        evaluate(EvalConfig(tasks=[TaskSection("lm_eval", [str(tmp_path / "nowhere")], lm_eval_tasks=["x"])]),
                 tmp_path / "eval", progress=False)


def test_lm_eval_sections_are_checked():
    from diabetica_jax.configuration import FieldError

    with pytest.raises(FieldError, match="lm_eval_tasks is empty"):
        EvalConfig(tasks=[TaskSection("lm_eval", [])])
    with pytest.raises(FieldError, match="lm_eval_tasks is read by task lm_eval only"):
        EvalConfig(tasks=[TaskSection("mcq", ["embedded:mini_mcq.csv"], lm_eval_tasks=["mmlu"])])
    with pytest.raises(FieldError, match="lm_eval runs on a local model"):
        EvalConfig(model=EvalModelSection(path="openai:gpt"), tasks=[TaskSection("lm_eval", [],
                                                                               lm_eval_tasks=["mmlu"])])


def test_lm_eval_metric_names_keep_filter_and_stderr_apart():
    assert harness._metric_name("acc,none") == "acc" and harness._metric_name("acc_stderr,none") == "acc_stderr"
    assert harness._metric_name("exact_match,strict-match") == "exact_match[strict-match]"
    assert harness._metric_name("exact_match_stderr,strict-match") == "exact_match[strict-match]_stderr"
