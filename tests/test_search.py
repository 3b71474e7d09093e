"""A grid's search: its block in the grid file, the trials per method, and `clo select` on made-up trials."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clo_lib.common.errors import InputError
from clo_lib.grid.search import pick, trials_of
from clo_lib.grid.spec import GridError, read_spec

REPO = Path(__file__).resolve().parents[1]


def grid_file(tmp_path, search):
    data = {"models": {"toy": {}}, "layers": ["params/presets/toy.yaml"],
            "slices": [{"languages": ["sw"], "methods": ["sft", "clo"], "sizes": [8]}], "search": search}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {"space": {"train.learning_rate": [1e-4, 3e-4]}, "metric": ["fidelity_tgt"], "prompts": "val.jsonl"}


@pytest.mark.parametrize("change,message", [
    ({"methods": {"clo": {"train.beta": [0.1, 0.2, 0.5]}}},
     "search.methods.clo gives 3 trials and search.space 2; expected the same number of trials for every method"),
    ({"space": {"data.size": [8, 16]}}, "search.space.data.size: expected train.* settings only"),
    ({"space": {"train.learning_rate": 3e-4}}, "search.space.train.learning_rate = 0.0003; expected a non-empty list"),
    ({"metric": []}, "search.metric is empty"),
    ({"prompts": 3}, "search.prompts"),
])
def test_a_bad_search_block_is_refused_in_one_sentence(tmp_path, change, message):
    with pytest.raises(GridError, match=message.replace(".", r"\.").replace("*", r"\*")):
        read_spec(grid_file(tmp_path, {**GOOD, **change}))
    assert read_spec(grid_file(tmp_path, GOOD)).search.metric == ["fidelity_tgt"]


def test_trials_are_the_product_of_the_space_in_the_file_order_the_same_count_for_every_method():
    space = {"train.learning_rate": [1e-4, 3e-4], "train.epochs": [2, 4]}
    assert trials_of(space, {}, "sft") == [
        {"train.learning_rate": 1e-4, "train.epochs": 2}, {"train.learning_rate": 1e-4, "train.epochs": 4},
        {"train.learning_rate": 3e-4, "train.epochs": 2}, {"train.learning_rate": 3e-4, "train.epochs": 4}]
    own = {"clo": {"train.beta": [0.1, 0.2, 0.3, 0.4]}}
    assert [t["train.beta"] for t in trials_of(space, own, "clo")] == [0.1, 0.2, 0.3, 0.4]


def make_trial(root, name, lr, metrics):
    trial = root / name
    (trial / "validation").mkdir(parents=True)
    (trial / "model").mkdir()
    (trial / "model" / "weights.bin").write_text(name)
    (trial / "config.yaml").write_text(yaml.safe_dump({"name": name, "train": {"learning_rate": lr}}))
    (trial / "train_log.json").write_text(json.dumps({"fingerprint": {"config": name}}))
    (trial / "validation" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    return trial


def test_select_keeps_the_best_sum_the_first_on_a_tie_and_links_its_weights(tmp_path):
    trials = [make_trial(tmp_path, "r-t1", 1e-4, {"fidelity_tgt": 0.5, "accuracy_tgt": 0.5}),
              make_trial(tmp_path, "r-t2", 3e-4, {"fidelity_tgt": 0.9, "accuracy_tgt": 0.3}),
              make_trial(tmp_path, "r-t3", 6e-4, {"fidelity_tgt": 0.4, "accuracy_tgt": 0.8})]
    record = pick(trials, ["fidelity_tgt", "accuracy_tgt"], ["train.learning_rate"], tmp_path / "r-best")
    assert record["picked"] == "r-t2" and record["settings"] == {"train.learning_rate": 3e-4}  # 1.2 ties with t3
    assert [t["score"] for t in record["trials"]] == pytest.approx([1.0, 1.2, 1.2])
    best = tmp_path / "r-best"
    assert (best / "model" / "weights.bin").read_text() == "r-t2" and (best / "model").is_symlink()
    assert yaml.safe_load((best / "config.yaml").read_text())["name"] == "r-t2"
    assert json.loads((best / "pick.json").read_text())["fingerprint"]["trials"]["r-t3"] is not None
    again = pick(trials, ["accuracy_tgt"], ["train.learning_rate"], best)  # another metric: re-linked
    assert again["picked"] == "r-t3" and (best / "model" / "weights.bin").read_text() == "r-t3"


def test_select_names_a_missing_metric_and_a_missing_validation_in_one_sentence(tmp_path):
    trial = make_trial(tmp_path, "r-t1", 1e-4, {"fidelity_tgt": 0.5})
    with pytest.raises(InputError, match=r"metrics.json: metric 'winrate' is missing or empty; search.metric must"):
        pick([trial], ["winrate"], ["train.learning_rate"], tmp_path / "best")
    (trial / "validation" / "metrics.json").unlink()
    done = subprocess.run([sys.executable, "-m", "clo_lib", "select", str(trial), "--metric", "fidelity_tgt",
                           "--keys", "train.learning_rate", "--out", str(tmp_path / "best")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "evaluate trial" in done.stderr
    assert not (tmp_path / "best" / "pick.json").exists()


def test_a_minus_term_counts_a_metric_where_lower_is_better_also_from_the_command_line(tmp_path):
    """`-ref_nll_tgt`: a validation loss ranks trials with its sign flipped (0.9 - 2.0 > 0.95 - 2.2)."""
    trials = [make_trial(tmp_path, "r-t1", 1e-4, {"fidelity_tgt": 0.95, "ref_nll_tgt": 2.2}),
              make_trial(tmp_path, "r-t2", 3e-4, {"fidelity_tgt": 0.9, "ref_nll_tgt": 2.0})]
    record = pick(trials, ["fidelity_tgt", "-ref_nll_tgt"], ["train.learning_rate"], tmp_path / "r-best")
    assert record["picked"] == "r-t2" and record["trials"][1]["metrics"] == {
        "fidelity_tgt": 0.9, "ref_nll_tgt": 2.0}
    assert [t["score"] for t in record["trials"]] == pytest.approx([-1.25, -1.1])
    done = subprocess.run([sys.executable, "-m", "clo_lib", "select", *map(str, trials), "--metric=-ref_nll_tgt",
                           "--metric=fidelity_tgt", "--keys", "train.learning_rate", "--out", str(tmp_path / "cli")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cli" / "pick.json").read_text())["picked"] == "r-t2"


def test_mtbench_counts_on_validation_only_where_the_grid_holds_its_validation_questions_out_of_test(tmp_path):
    from clo_lib.grid.expand import load_grid

    def grid_with(overrides, metric):
        path = grid_file(tmp_path, {**GOOD, "metric": metric})
        data = yaml.safe_load(path.read_text())
        data["overrides"] = overrides
        path.write_text(yaml.safe_dump(data))
        return load_grid(path)

    grid = grid_with({"eval.mtbench": True, "eval.mtbench_questions": "test"}, ["fidelity_tgt", "fidelity_en@mtbench"])
    validations = [s.config.eval for s in grid.stages.values() if s.kind == "validate"]
    tests = [s.config.eval for s in grid.stages.values() if s.kind == "evaluate"]
    assert validations and all(e.mtbench and e.mtbench_questions == "validation" for e in validations)
    assert tests and all(e.mtbench and e.mtbench_questions == "test" for e in tests)
    plain = grid_with({"eval.mtbench": True}, ["fidelity_tgt"])  # all 80 at test: none asked on validation
    assert not any(s.config.eval.mtbench for s in plain.stages.values() if s.kind == "validate")
    with pytest.raises(GridError, match="search.metric names an MT-bench metric, but run .* does not hold MT-bench "
                                        "validation questions out of test; set eval.mtbench: true and "
                                        "eval.mtbench_questions: test"):
        grid_with({"eval.mtbench": True}, ["fidelity_tgt", "fidelity_en@mtbench"])


def test_without_prompts_a_search_ranks_on_the_corpus_held_back_records_or_says_which_is_missing(tmp_path):
    from clo_lib.grid.expand import load_grid

    path = grid_file(tmp_path, {**GOOD, "prompts": None})
    with pytest.raises(GridError, match=r"search.prompts is not set and run toy-sw-sft-n8-s0 holds back no validation "
                                        r"records \(data.validation_size = 0\); set one of them"):
        load_grid(path)
    data = yaml.safe_load(path.read_text())
    data["overrides"] = {"data.validation_size": 16}
    path.write_text(yaml.safe_dump(data))
    grid = load_grid(path)
    corpus = Path(grid.stages["translate/sw"].workdir)
    assert all(s.config.eval.prompts == str(corpus / "validation.jsonl")
               for s in grid.stages.values() if s.kind == "validate")
