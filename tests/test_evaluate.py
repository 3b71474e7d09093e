"""Evaluation: fidelity by hand-made answers, generation cache, lm-eval accuracy checked independently, the judge."""

import json
import math

import pytest
import torch

from clo_lib.artifacts.runs import metrics_rows
from clo_lib.common import langid
from clo_lib.common.endpoint import ChatEndpoint, EndpointError
from clo_lib.common.stats import win_rate
from clo_lib.config.load import load_config
from clo_lib.stages import evaluate
from clo_lib.stages import scores as stages_scores
from clo_lib.stages.scores import fidelity, judge_against


def gen(id_, side, answer, lang=None):
    return {"id": id_, "side": side, "lang": lang or ("sw" if side == "tgt" else "en"), "prompt": f"p{id_}",
            "answer": answer}


def test_fidelity_counts_answers_and_lines_in_the_right_language():
    generations = [
        gen(0, "tgt", "Ndizi ina rangi ya njano na ni tunda tamu sana."),
        gen(1, "tgt", "The banana is yellow and it is a sweet fruit."),
        gen(2, "tgt", ""),  # undetermined: counts as not in Swahili
        gen(3, "tgt", "Ndizi ina rangi ya njano na ni tunda tamu sana.\nIt is also a very popular fruit in the world."),
        gen(0, "en", "The banana is yellow and it is a sweet fruit."),
        gen(1, "en", "The apple is red and it grows on a tree."),
    ]
    metrics = fidelity(generations, "sw")
    assert metrics["undetermined_tgt"] == 0.25 and metrics["undetermined_en"] == 0.0
    assert metrics["fidelity_en"] == 1.0
    # answer 3 switches language midway: as a whole it counts if lingua calls it Swahili; its lines split 1/1
    mixed_counts = langid.detect(generations[3]["answer"], ["en", "sw"])[0] == "sw"
    assert metrics["fidelity_tgt"] == (1 + mixed_counts) / 4
    assert metrics["line_fidelity_tgt"] == pytest.approx(2 / 4)  # lines: sw, en, sw, en (the empty one has none)
    assert metrics["line_fidelity_en"] == 1.0


def test_language_id_judges_prose_not_code_urls_or_numbers():
    """A Swahili answer made mostly of an English-named code block and a URL is in Swahili; lingua on the raw text
    says English. Translation protects the same spans (clo_lib.common.langid.prose)."""
    answer = ("Tumia kazi hii:\n```python\ndef total_price(items):\n    return sum(item.price for item in items)\n"
              "```\nSoma zaidi: https://docs.python.org/3/library/functions.html")
    raw = langid.detector(("en", "sw")).compute_language_confidence_values(answer)[0].language.name
    assert raw == "ENGLISH" and langid.detect(answer, ["en", "sw"])[0] == "sw"
    assert fidelity([gen(0, "tgt", answer)], "sw")["fidelity_tgt"] == 1.0
    assert langid.detect("12 + 30 = 42", ["en", "sw"])[0] is None  # a sum has no language


def test_win_rate_and_its_interval_against_scipy():
    """Wilson intervals, checked against scipy's binomial test; ties count half, and a run of ties no longer gives
    a zero-width interval (the old normal interval from the scores' own spread did)."""
    from scipy.stats import binomtest

    rate = win_rate([1, 0, 1, 1])
    expected = binomtest(3, 4).proportion_ci(confidence_level=0.95, method="wilson")
    assert rate["mean"] == 0.75 and rate["n"] == 4 and rate["ties"] == 0.0
    assert rate["low"] == pytest.approx(expected.low, abs=2e-4)
    assert rate["high"] == pytest.approx(expected.high, abs=2e-4)
    ties = win_rate([0.5] * 42)
    as_half = binomtest(21, 42).proportion_ci(confidence_level=0.95, method="wilson")
    assert ties["mean"] == 0.5 and ties["ties"] == 1.0
    assert ties["low"] == pytest.approx(as_half.low, abs=2e-4) and ties["high"] - ties["low"] > 0.25
    assert win_rate([1, 0, 0.5, 1])["ties"] == 0.25
    assert math.isnan(win_rate([])["mean"]) and win_rate([])["n"] == 0


# --- generation on a tiny local model ----------------------------------------------------------------------------


def prompt_file(tmp_path, n=3):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt_en": f"What is the sum of {i} and 2?",
                                        "prompt_tgt": f"{i} jumlisha 2 ni ngapi?"}) + "\n" for i in range(n)))
    return path


def eval_config(tmp_path, model_dir, **eval_section):
    return load_config({"language": "sw", "output_dir": str(tmp_path), "model": {"name_or_path": str(model_dir),
                        "dtype": "float32", "backend": "hf"},
                        "eval": {"prompts": str(prompt_file(tmp_path)), "max_new_tokens": 6, "batch_size": 4,
                                 **eval_section}})


def test_generation_is_cached_per_prompt_and_decoding_settings(tmp_path, tiny_llama, monkeypatch):
    cfg = eval_config(tmp_path, tiny_llama)
    model, tokenizer = evaluate.load_for_eval(cfg, tiny_llama)
    prompts = evaluate.load_prompts(cfg)
    first = evaluate.generate_answers(model, tokenizer, prompts, cfg, tmp_path / "gen.jsonl", progress=False)
    assert [(g["id"], g["side"], g["lang"]) for g in first[:2]] == [("0", "tgt", "sw"), ("0", "en", "en")]
    # greedy answers match a plain generate() call on the same prompt
    text = "### Instruction:\n" + prompts[1]["prompt_en"] + "\n\n### Response:\n"
    ids = tokenizer(text, return_tensors="pt")
    plain = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(plain[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert first[3]["answer"] == expected
    monkeypatch.setattr(model, "generate", lambda **kw: pytest.fail("should come from the cache"))
    assert evaluate.generate_answers(model, tokenizer, prompts, cfg, tmp_path / "gen.jsonl", progress=False) == first
    monkeypatch.undo()
    longer = eval_config(tmp_path, tiny_llama, max_new_tokens=7)
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(1) or real(**kw))
    evaluate.generate_answers(model, tokenizer, prompts, longer, tmp_path / "gen.jsonl", progress=False)
    assert calls  # new decoding settings: generated again


def test_generation_cache_keys_hold_side_language_and_the_weights(tmp_path, tiny_llama, monkeypatch):
    """An untranslated prompt (the same text on both sides) keeps its target row, and other weights evaluated into
    the same folder are answered anew instead of from the old model's cache."""
    import torch

    cfg = eval_config(tmp_path, tiny_llama)
    model, tokenizer = evaluate.load_for_eval(cfg, tiny_llama)
    same = [{"id": "0", "prompt_en": "What is the sum of 2 and 3?", "prompt_tgt": "What is the sum of 2 and 3?"}]
    rows = evaluate.generate_answers(model, tokenizer, same, cfg, tmp_path / "gen.jsonl", progress=False)
    assert [(r["side"], r["lang"]) for r in rows] == [("tgt", "sw"), ("en", "en")]
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(1) or real(**kw))
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(0.01)  # as if trained again into the same folder
    evaluate.generate_answers(model, tokenizer, same, cfg, tmp_path / "gen.jsonl", progress=False)
    assert calls


def test_bad_prompt_rows_are_refused_before_any_model_loads(tmp_path, tiny_llama, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_en": "Hi", "prompt_tgt": "Habari"}\n{"prompt_en": "Bye"}\n')
    cfg = eval_config(tmp_path, tiny_llama, prompts=str(bad))
    monkeypatch.setattr(evaluate, "load_for_eval", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="row 1: field 'prompt_tgt' is missing or empty"):
        evaluate.run_evaluate(cfg, tmp_path / "run", tiny_llama)


def test_evaluate_run_writes_metrics_last_and_skips_judging_without_a_judge(tmp_path, tiny_llama):
    cfg = eval_config(tmp_path, tiny_llama)
    messages = []
    metrics = evaluate.run_evaluate(cfg, tmp_path / "run", tiny_llama, method="base", progress=False,
                                    log=messages.append)
    assert set(metrics) == {"fidelity_tgt", "fidelity_en", "undetermined_tgt", "undetermined_en",
                            "line_fidelity_tgt", "line_fidelity_en", "prompts"}
    assert "judging skipped: no judge configured" in messages[0]
    rows = metrics_rows(tmp_path / "run" / "metrics.json")
    assert {r["metric"] for r in rows} == set(metrics) and rows[0]["method"] == "base" and rows[0]["lang"] == "sw"
    assert len((tmp_path / "run" / "generations.jsonl").read_text().splitlines()) == 6


def test_a_judge_without_its_key_fails_before_generation(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.delenv("CLO_JUDGE_KEY", raising=False)
    cfg = eval_config(tmp_path, tiny_llama, judge_base_url="http://127.0.0.1:9/v1", judge_api_key_env="CLO_JUDGE_KEY")
    monkeypatch.setattr(evaluate, "load_for_eval", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(EndpointError, match="CLO_JUDGE_KEY is not set"):
        evaluate.run_evaluate(cfg, tmp_path / "run", tiny_llama)


# --- multiple-choice accuracy through lm-eval, checked against our own log-likelihood argmax --------------------

QUESTIONS = [("What is the sum of 2 and 3?", ["4", "5", "6", "7"], 1),
             ("What color is the banana?", ["red", "yellow", "green", "black"], 1),
             ("How many legs does the spider have?", ["2", "4", "6", "8"], 3),
             ("What kind of thing is the cow?", ["a fruit", "a drink", "an animal", "a plant"], 2),
             ("What color is the coal?", ["white", "black", "red", "green"], 1),
             ("What is the sum of 1 and 1?", ["2", "3", "4", "5"], 0)]


def write_task(tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    return tasks


def test_lm_eval_accuracy_matches_an_independent_loglikelihood_argmax(tmp_path, tiny_llama):
    pytest.importorskip("lm_eval")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf",
                                                   "dtype": "float32"}})
    loaded = evaluate.load_for_eval(cfg, tiny_llama)
    metrics = evaluate.mc_accuracy(*loaded, {"en": ["toy_mc"], "sw": ["toy_mc"]}, "sw",
                                   task_dir=str(write_task(tmp_path)), batch_size=4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    correct = 0
    for question, choices, answer in QUESTIONS:
        context = tokenizer(f"{question}\nAnswer:")["input_ids"]
        scores = []
        for choice in choices:
            whole = tokenizer(f"{question}\nAnswer: {choice}")["input_ids"]
            continuation = whole[len(context):]
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(logits[len(context) - 1 + i, t].item() for i, t in enumerate(continuation)))
        correct += max(range(len(choices)), key=scores.__getitem__) == answer
    assert metrics["mc_acc:toy_mc"] == pytest.approx(correct / len(QUESTIONS))
    assert metrics["mc_acc_tgt"] == metrics["mc_acc_en"] == metrics["mc_acc:toy_mc"]


# --- the judge, against a stub endpoint on loopback --------------------------------------------------------------


@pytest.fixture
def judge_stub(chat_stub):
    """A judge preferring the response with "good" in it (rule prefers_good), or always "A" (pure position bias)."""
    state = {"rule": "prefers_good"}

    def verdict(body):
        a = body["messages"][0]["content"].split("[Response A]\n")[1].split("\n\n[Response B]")[0]
        return "A" if state["rule"] == "always_a" or "good" in a else "B"

    url, requests = chat_stub(verdict)
    state["requests"] = requests
    yield url, state


def test_judge_uses_both_orders_enforces_language_and_caches(tmp_path, judge_stub, monkeypatch):
    url, state = judge_stub
    monkeypatch.setenv("CLO_JUDGE_KEY", "k")
    endpoint = ChatEndpoint(url, "judge", "CLO_JUDGE_KEY")
    sw_good, sw_bad = "Jibu hili ni zuri sana na kamili kwa swali lako good.", "Jibu hili ni baya na fupi mno."
    code = "```python\nprint('this is the whole answer, good code in English words')\n```"
    ours = [gen(0, "tgt", sw_good), gen(1, "tgt", sw_bad), gen(2, "tgt", "This answer is in English, sadly."),
            gen(3, "tgt", code)]
    reference = [gen(0, "tgt", sw_bad), gen(1, "tgt", sw_good), gen(2, "tgt", sw_bad), gen(3, "tgt", sw_bad)]
    scored = judge_against(ours, reference, endpoint, "sw", tmp_path / "j.jsonl")
    assert [s["score"] for s in scored] == [1.0, 0.0, 0.0, 1.0]
    # a code-only answer has no language to lose on: the judge decides it (here, it prefers "good")
    assert [s["how"] for s in scored] == ["judge", "judge", "language", "judge"]
    assert len(state["requests"]) == 6  # two orders for each of three pairs; none for the English one
    judged = state["requests"][0]["body"]["messages"][0]["content"]
    assert "first, a response in Swahili is better than a response in another language; then" in judged
    state["rule"] = "always_a"  # a judge with pure position bias: both orders cancel to ties
    assert [s["score"] for s in judge_against(ours[:1], reference[:1], endpoint, "sw", tmp_path / "j2.jsonl")] == [0.5]
    before = len(state["requests"])
    judge_against(ours, reference, endpoint, "sw", tmp_path / "j.jsonl")
    assert len(state["requests"]) == before  # cached


def test_win_rates_land_in_metrics_with_the_sft_reference(tmp_path, tiny_llama, judge_stub, monkeypatch):
    url, state = judge_stub
    monkeypatch.setenv("CLO_JUDGE_KEY", "k")
    cfg = eval_config(tmp_path, tiny_llama, judge_base_url=url, judge_api_key_env="CLO_JUDGE_KEY")
    evaluate.run_evaluate(cfg, tmp_path / "sft", tiny_llama, method="sft", progress=False, log=lambda m: None)
    metrics = evaluate.run_evaluate(cfg, tmp_path / "clo", tiny_llama, reference_run=tmp_path / "sft",
                                    method="clo", progress=False, log=lambda m: None)
    # the same model on both sides gives identical answers: every comparison is a tie or a split
    for side in ("tgt", "en"):
        assert metrics[f"winrate_vs_sft_{side}"] == 0.5 and metrics[f"winrate_vs_sft_{side}_n"] == 3
        assert metrics[f"winrate_vs_sft_{side}_ci_low"] < 0.5 < metrics[f"winrate_vs_sft_{side}_ci_high"]
    assert json.loads((tmp_path / "clo" / "metrics.json").read_text())["run"]["method"] == "clo"


def test_the_sft_answers_judged_against_are_those_of_the_same_decoding(tmp_path, tiny_llama):
    """An SFT run evaluated twice (6 and then 2 new tokens) holds both sets of answers; a run evaluated with 6 new
    tokens is judged against the SFT answers made with 6, not whichever came last."""
    cfg = eval_config(tmp_path, tiny_llama, max_new_tokens=6)
    short = eval_config(tmp_path, tiny_llama, max_new_tokens=2)
    model, tokenizer = evaluate.load_for_eval(cfg, tiny_llama)
    prompts = evaluate.load_prompts(cfg)
    sft = tmp_path / "sft"
    six = evaluate.generate_answers(model, tokenizer, prompts, cfg, sft / "generations.jsonl", progress=False)
    evaluate.generate_answers(model, tokenizer, prompts, short, sft / "generations.jsonl", progress=False)
    chosen = evaluate.reference_answers(sft, cfg)
    assert sorted((r["id"], r["side"], r["answer"]) for r in chosen) == sorted(
        (r["id"], r["side"], r["answer"]) for r in six)
    assert len(evaluate.reference_answers(sft, short)) == len(six)


def test_alpaca_eval_leaves_out_flagged_translations(tmp_path, monkeypatch):
    import datasets

    from clo_lib.toy import translator

    rows = [{"instruction": "Name three birds."}, {"instruction": "Write a haiku about rain."}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    monkeypatch.setattr(translator.ToyTranslator, "translate_batch",
                        lambda self, texts, src, tgt: ["" if "haiku" in t else "Taja ndege watatu." for t in texts])
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path), "translation": {"backend": "toy"}})
    prompts = evaluate.translated_alpaca_eval(cfg)
    assert [p["prompt_en"] for p in prompts] == ["Name three birds."]  # the empty translation is flagged, left out


def test_metrics_say_how_many_examples_a_run_used_and_a_base_model_has_no_size(tmp_path, tiny_llama):
    cfg = eval_config(tmp_path, tiny_llama)
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.json").write_text(json.dumps({"examples_used": 37}))
    evaluate.run_evaluate(cfg, run, tiny_llama, method="clo", progress=False, log=lambda m: None)
    facts = json.loads((run / "metrics.json").read_text())["run"]
    assert facts["examples_used"] == 37 and facts["size"] == cfg.data.size
    evaluate.run_evaluate(cfg, tmp_path / "base", tiny_llama, method="base", progress=False, log=lambda m: None)
    facts = json.loads((tmp_path / "base" / "metrics.json").read_text())["run"]
    assert facts["size"] is None and facts["examples_used"] is None  # not 0


def test_reference_answers_give_accuracy_and_a_deterministic_judge():
    prompts = [{"id": "0", "prompt_en": "q", "prompt_tgt": "q", "answer_en": "The apple is red.",
                "answer_tgt": "Tufaha ina rangi ya nyekundu."}]
    right_sw, right_en = "Tufaha ina rangi ya nyekundu.", "The apple is red."
    wrong_sw = "Tufaha ina rangi ya kijani."
    ours = [gen("0", "tgt", right_en), gen("0", "en", "The apple is red.\nAnd more.")]
    assert stages_scores.accuracy(ours, prompts) == {"accuracy_tgt": 1.0, "accuracy_en": 1.0}  # right, either language
    assert stages_scores.accuracy([gen("0", "tgt", wrong_sw)], prompts)["accuracy_tgt"] == 0.0
    score = lambda mine, theirs: stages_scores.reference_judge([gen("0", "tgt", mine)], [gen("0", "tgt", theirs)],  # noqa
                                                          prompts, "sw")[0]["score"]
    # the one order of criteria (JUDGE_PROMPT): the prompt's language first (PAPER.md: wrong-language answers lose)
    assert score(right_sw, right_en) == 1.0 and score(wrong_sw, right_en) == 1.0 and score(right_en, wrong_sw) == 0.0
    assert score(right_sw, wrong_sw) == 1.0 and score(right_sw, right_sw) == 0.5  # then the right answer
    # an answer whose language cannot be told (a number, code) is not decided by language: quality decides
    assert score("42", wrong_sw) == 0.5 and score("```\nprint('the apple is red')\n```", right_sw) == 0.0


def test_prompt_file_names_can_hold_the_language(tmp_path, tiny_llama):
    (tmp_path / "eval_sw.jsonl").write_text('{"prompt_en": "Hi", "prompt_tgt": "Habari"}\n')
    cfg = eval_config(tmp_path, tiny_llama, prompts=str(tmp_path / "eval_{lang}.jsonl"))
    assert evaluate.load_prompts(cfg)[0]["prompt_tgt"] == "Habari"


@pytest.mark.parametrize("text", ["OK", "No", "Hi", "Ja", "Nne.", "Ni 4."])
def test_too_little_prose_is_undetermined_however_confident_lingua_is(text):
    """With two languages lingua's confidences sum to 1, so the top one always clears 0.5: "OK" was Swahili at
    0.84. A text is placed only with at least eval.lid_min_letters letters of prose."""
    assert langid.detect(text, ["en", "sw"])[0] is None
    assert langid.detect("Anga ina rangi ya bluu.", ["en", "sw"])[0] == "sw"
    assert langid.detect("The sky is blue.", ["en", "de"])[0] == "en"
    metrics = stages_scores.fidelity([{"side": "tgt", "lang": "sw", "answer": text}], "sw")
    assert metrics["fidelity_tgt"] == 0.0 and metrics["undetermined_tgt"] == 1.0


def test_the_letter_rule_is_a_setting_of_evaluation_and_translation():
    from clo_lib.config.load import load_config

    cfg = load_config({"language": "sw", "eval": {"lid_min_letters": 1}, "translation": {"lid_min_letters": 8}})
    assert cfg.eval.lid_min_letters == 1 and cfg.translation.lid_min_letters == 8
    assert langid.detect("OK", ["en", "sw"], min_letters=cfg.eval.lid_min_letters)[0] == "sw"


def test_another_judge_endpoint_is_asked_again_not_served_from_the_cache(tmp_path, chat_stub, monkeypatch):
    """The judge cache was keyed by the judge model's name only: the same model name behind another server (a
    local vLLM after GPT-4o, say) got the first server's verdicts."""
    monkeypatch.setenv("CLO_JUDGE_KEY", "k")
    first_url, first = chat_stub(lambda body: "A")
    second_url, second = chat_stub(lambda body: "B")
    ours, reference = [gen(0, "tgt", "Jibu hili ni zuri sana.")], [gen(0, "tgt", "Jibu hili ni zuri pia.")]
    cache = tmp_path / "judgments.jsonl"
    judge_against(ours, reference, ChatEndpoint(first_url, "judge", "CLO_JUDGE_KEY"), "sw", cache)
    judge_against(ours, reference, ChatEndpoint(second_url, "judge", "CLO_JUDGE_KEY"), "sw", cache)
    assert len(first) == 2 and len(second) == 2


def test_a_chat_models_answers_are_cached_per_chat_template(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tiny_llama), "prompt_format": "chat"},
                       "eval": {"max_new_tokens": 2}})
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "left"
    prompts = [{"id": 0, "prompt_en": "Hello there?", "prompt_tgt": "Habari?"}]
    cache = tmp_path / "generations.jsonl"
    evaluate.generate_answers(model, tokenizer, prompts, cfg, cache, progress=False)
    tokenizer.chat_template = "{% for m in messages %}USER SAYS: {{ m['content'] }}\n{% endfor %}ANSWER:"
    evaluate.generate_answers(model, tokenizer, prompts, cfg, cache, progress=False)
    assert len(cache.read_text().splitlines()) == 4  # both sides generated again under the other template
