"""The grid runner: plans, a two-run slice end to end through papermill, resume, isolated failures, bad files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clo_lib.grid import run as grid_run
from clo_lib.grid import state as grid_state
from clo_lib.grid.expand import load_grid
from clo_lib.grid.run import run_grid, select
from clo_lib.grid.spec import GridError

REPO = Path(__file__).resolve().parents[1]


def write_grid(tmp_path, model_dir, **extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt_en": f"What is the sum of {i} and 1?",
                                           "prompt_tgt": f"{i} jumlisha 1 ni ngapi?"}) + "\n" for i in range(2)))
    data = {
        "name": "mini", "output_dir": str(tmp_path / "out"), "layers": ["params/presets/toy.yaml"],
        "overrides": {"model.name_or_path": str(model_dir), "train.epochs": 1, "train.batch_size": 4,
                      "eval.prompts": str(prompts), "eval.max_new_tokens": 4},
        "models": {"tiny": {}},
        "slices": [{"languages": ["sw"], "methods": ["sft", "clo"], "sizes": [4]}],
        "base": False,
        **extra,
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_named_slices_run_by_default_or_by_name(tmp_path, tiny_llama):
    slices = [{"name": "main", "languages": ["sw"], "methods": ["sft"], "sizes": [4]},
              {"name": "more", "languages": ["sw"], "methods": ["sft"], "sizes": [8], "seeds": [1]}]
    path = write_grid(tmp_path, tiny_llama, slices=slices, default_slices=["main"])
    trains = lambda grid: sorted(s.id for s in grid.stages.values() if s.kind == "train")  # noqa: E731
    assert trains(load_grid(path)) == ["train/tiny-sw-sft-n4-s0"]
    assert trains(load_grid(path, ["more"])) == ["train/tiny-sw-sft-n8-s1"]
    assert len(trains(load_grid(path, ["all"]))) == 2
    with pytest.raises(GridError, match="no slice named 'sizes'; its slices are main, more"):
        load_grid(path, ["sizes"])
    smol = load_grid(REPO / "params/grids/smol.yaml")
    methods = {s.facts["method"] for s in smol.stages.values() if s.kind == "evaluate"}
    assert methods == {"base", "sft", "sft_dpo", "clo"}
    every = load_grid(REPO / "params/grids/smol.yaml", ["all"])
    assert {s.facts["size"] for s in every.stages.values() if s.kind == "train"} == {16, 32, 64}
    assert {s.facts["seed"] for s in every.stages.values() if s.kind == "train"} == {0, 1, 2}


def test_plan_counts_for_the_shipped_grids():
    paper = load_grid(REPO / "params/grids/paper.yaml")
    kinds = [s.kind for s in paper.stages.values()]
    # 5 models x 6 languages x 5 methods at 6,400, plus the Llama-2-7B sweep: 3 languages x 2 methods x 5 more sizes
    # the search: 3 learning rates a run, one of them the shared budget's (that run itself), except for SFT+DPO,
    # whose trials all start from tuned SFT (30 runs at 6,400)
    assert kinds.count("train") == 150 + 30 + 2 * 180 + 30
    assert kinds.count("validate") == 3 * 180 and kinds.count("select") == 180
    assert kinds.count("evaluate") == 180 + 30 + 180  # every run, each base model per language, every pick
    validate = paper.stages["validate/llama2-7b-sw-clo-n6400-s0-t1"]
    assert validate.config.eval.prompts == "outputs/paper/data/sw/validation.jsonl"  # held back by translate/sw
    assert paper.stages["translate/sw"].config.data.validation_size == 200
    assert kinds.count("translate") == 6 and kinds.count("analyze") == 1
    assert paper.stages["translate/sw"].config.data.pool_size == 6400
    sft_dpo = paper.stages["train/llama3-8b-sw-sft_dpo-n6400-s0"]
    assert "train/llama3-8b-sw-sft-n6400-s0" in sft_dpo.deps
    assert sft_dpo.config.train.init_from.endswith("llama3-8b-sw-sft-n6400-s0/model")
    clo_eval = paper.stages["evaluate/llama2-7b-ko-clo-n200-s0"]
    assert clo_eval.parameters["reference_run"].endswith("llama2-7b-ko-sft-n200-s0")
    for name in ("toy", "colab"):
        assert load_grid(REPO / f"params/grids/{name}.yaml").stages["analyze"]
    # the transfer study: 6 transferred models (5 inits and the control) x 3 seeds, CLO on those and the plain model
    study = load_grid(REPO / "params/grids/toy_salt.yaml")
    kinds = [s.kind for s in study.stages.values()]
    assert (kinds.count("transfer"), kinds.count("train"), kinds.count("evaluate")) == (18, 21, 42)
    salt = study.stages["transfer/toy-salt-sw-s1"].config.transfer
    assert (salt.method, salt.donor, salt.ridge) == ("salt", "outputs/toy_salt/donor-sw/model", 0.0)
    assert "transfer/toy-cpt-sw-s0" in study.stages["evaluate/toy-cpt-sw-base-s0"].deps
    assert study.stages["train/toy-sw-clo-n64-s0"].config.model.name_or_path == "outputs/toy/world/base_model"


def test_same_ids_across_languages_ties_every_run_to_every_corpus(tmp_path, tiny_llama):
    two = {"slices": [{"languages": ["sw", "ko"], "methods": ["sft"], "sizes": [4]}]}
    grid = load_grid(write_grid(tmp_path, tiny_llama, same_ids_across_languages=True, **two))
    train = grid.stages["train/tiny-sw-sft-n4-s0"]
    assert train.config.data.same_ids_across_languages == ["ko", "sw"]
    assert {"translate/ko", "translate/sw"} <= set(train.deps)  # it needs both corpora before it can cut
    alone = load_grid(write_grid(tmp_path, tiny_llama, **two)).stages["train/tiny-sw-sft-n4-s0"]
    assert alone.config.data.same_ids_across_languages == [] and "translate/ko" not in alone.deps
    with pytest.raises(GridError, match="same_ids_across_languages = 'yes'; expected true or false"):
        load_grid(write_grid(tmp_path, tiny_llama, same_ids_across_languages="yes", **two))


def test_only_selects_a_slice_with_what_it_waits_for(tmp_path, tiny_llama):
    grid = load_grid(write_grid(tmp_path, tiny_llama))
    ids = [s.id for s in select(grid, ["evaluate/*clo*"])]
    assert ids == ["translate/sw", "train/tiny-sw-sft-n4-s0", "evaluate/tiny-sw-sft-n4-s0", "train/tiny-sw-clo-n4-s0",
                   "evaluate/tiny-sw-clo-n4-s0"]
    assert [s.id for s in select(grid, ["evaluate/*-sft-*", "analyze"])] == [
        "translate/sw", "train/tiny-sw-sft-n4-s0", "evaluate/tiny-sw-sft-n4-s0", "analyze"]
    with pytest.raises(GridError, match="matches no stage"):
        select(grid, ["nothing-like-this"])


def test_a_two_run_slice_runs_end_to_end_then_resumes_with_nothing_twice(tmp_path, tiny_llama, monkeypatch):
    grid = load_grid(write_grid(tmp_path, tiny_llama))
    messages = []
    assert run_grid(grid, log=messages.append) == 0
    out = tmp_path / "out"
    for run in ("tiny-sw-sft-n4-s0", "tiny-sw-clo-n4-s0"):
        assert (out / run / "metrics.json").is_file() and (out / run / "03_evaluate.ipynb").is_file()
    results = (out / "results.csv").read_text()
    assert "tiny,sw,4,clo,0" in results and (out / "report.md").read_text().startswith("# Results: mini")
    assert any("left 0" in m for m in messages)
    # a second run finds everything done and runs nothing
    monkeypatch.setattr(grid_run, "execute_stage", lambda stage, **_: pytest.fail(f"{stage.id} ran twice"))
    again = []
    assert run_grid(load_grid(write_grid(tmp_path, tiny_llama)), log=again.append) == 0
    assert "0 to run" in again[0]


def test_a_changed_config_is_stale_never_done(tmp_path, tiny_llama, monkeypatch):
    """Change the learning rate in the grid file: status says stale (the run and its evaluation), run refuses in
    one sentence and touches nothing; --rerun-stale moves the old run aside and trains it again. A setting that
    cannot change results (logging) makes nothing stale; an evaluation setting only the evaluation."""
    sft_only = {"slices": [{"languages": ["sw"], "methods": ["sft"], "sizes": [4]}]}
    assert run_grid(load_grid(write_grid(tmp_path, tiny_llama, **sft_only)), log=lambda m: None) == 0
    run = tmp_path / "out" / "tiny-sw-sft-n4-s0"

    def state_after(**overrides):
        grid = load_grid(write_grid(tmp_path, tiny_llama, **sft_only, overrides={
            "model.name_or_path": str(tiny_llama), "train.epochs": 1, "train.batch_size": 4,
            "eval.prompts": str(tmp_path / "prompts.jsonl"), "eval.max_new_tokens": 4, **overrides}))
        return grid, grid_state.states(list(grid.stages.values()))

    _, state = state_after(**{"train.logging_steps": 7})
    assert set(state.values()) == {"done"}
    _, state = state_after(**{"eval.max_new_tokens": 5})
    assert state["train/tiny-sw-sft-n4-s0"] == "done" and state["evaluate/tiny-sw-sft-n4-s0"] == "stale"
    grid, state = state_after(**{"train.learning_rate": 5e-4})
    assert state["train/tiny-sw-sft-n4-s0"] == state["evaluate/tiny-sw-sft-n4-s0"] == "stale"
    assert state["translate/sw"] == "done"
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}
    with pytest.raises(GridError, match=r"2 stages were made under another config .* \(train/tiny-sw-sft-n4-s0, "
                                        r"evaluate/tiny-sw-sft-n4-s0\); rerun with --rerun-stale"):
        run_grid(grid, log=lambda m: None)
    assert {f: f.read_bytes() for f in run.rglob("*") if f.is_file()} == before
    status = subprocess.run([sys.executable, "-m", "clo_lib", "grid", "status", str(grid.path)], capture_output=True,
                            text=True, cwd=REPO)
    assert "stale    train/tiny-sw-sft-n4-s0" in status.stdout
    assert "done 1, stale 2, failed 0, running 0, left 1" in status.stdout

    ran = []
    real = grid_run.execute_stage
    monkeypatch.setattr(grid_run, "execute_stage", lambda stage, **_: (ran.append(stage.id), real(stage)))
    assert run_grid(grid, log=lambda m: None, rerun_stale=True) == 0
    assert ran == ["train/tiny-sw-sft-n4-s0", "evaluate/tiny-sw-sft-n4-s0", "analyze"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 5e-4
    aside = list((tmp_path / "out" / "stale").glob("*/tiny-sw-sft-n4-s0/train_log.json"))
    assert len(aside) == 1 and (aside[0].parent / "metrics.json").is_file()  # the old run, whole
    assert set(grid_state.states(list(grid.stages.values())).values()) == {"done"}


def test_a_killed_run_resumes_and_a_failure_is_isolated(tmp_path, tiny_llama, monkeypatch):
    grid = load_grid(write_grid(tmp_path, tiny_llama))
    real = grid_run.execute_stage

    def killed_at_clo_training(stage, **_):
        if stage.id == "train/tiny-sw-clo-n4-s0":
            raise KeyboardInterrupt
        real(stage)

    monkeypatch.setattr(grid_run, "execute_stage", killed_at_clo_training)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, log=lambda m: None)
    done = {stage for stage, state in grid_state.states(list(grid.stages.values())).items() if state == "done"}
    assert done == {"translate/sw", "train/tiny-sw-sft-n4-s0", "evaluate/tiny-sw-sft-n4-s0"}

    ran = []

    def fails_on_clo_training(stage, **_):
        ran.append(stage.id)
        if stage.id == "train/tiny-sw-clo-n4-s0":
            raise RuntimeError("CUDA out of memory (simulated)")
        real(stage)

    monkeypatch.setattr(grid_run, "execute_stage", fails_on_clo_training)
    messages = []
    assert run_grid(load_grid(write_grid(tmp_path, tiny_llama)), log=messages.append) == 1
    assert ran == ["train/tiny-sw-clo-n4-s0", "analyze"]  # nothing done before ran again; the analysis still runs
    failed = json.loads((tmp_path / "out" / "tiny-sw-clo-n4-s0" / "train.failed.json").read_text())
    assert "CUDA out of memory (simulated)" in failed["error"]
    assert any("evaluate/tiny-sw-clo-n4-s0: skipped (needs train/tiny-sw-clo-n4-s0)" in m for m in messages)
    assert "Failed stages" in (tmp_path / "out" / "report.md").read_text()


def test_submitit_local_executor_runs_the_same_stages(tmp_path, tiny_llama):
    pytest.importorskip("submitit")
    grid = load_grid(write_grid(tmp_path, tiny_llama, slices=[{"languages": ["sw"], "methods": ["sft"],
                                                               "sizes": [4]}]))
    assert run_grid(grid, executor="submitit-local", log=lambda m: None) == 0
    assert (tmp_path / "out" / "tiny-sw-sft-n4-s0" / "metrics.json").is_file()


@pytest.mark.parametrize("change,message", [
    ({"slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": [4], "modles": ["x"]}]},
     "unknown key slices[1].modles (did you mean slices[1].models?)"),
    ({"slices": [{"languages": ["sw"], "methods": ["magic"], "sizes": [4]}]}, "train.method = 'magic'"),
    ({"slices": [{"languages": ["xx"], "methods": ["clo"], "sizes": [4]}]}, "language = 'xx'"),
    ({"models": {}}, "models is empty; expected a short label per model"),
    ({"layers": ["params/presets/nope.yaml"]}, "layer 'params/presets/nope.yaml' does not exist"),
    ({"slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": [4], "models": ["gpt"]}]},
     "slices[1].models names 'gpt'"),
])
def test_bad_grid_files_are_refused_in_one_sentence(tmp_path, tiny_llama, change, message):
    path = write_grid(tmp_path, tiny_llama, **change)
    result = subprocess.run([sys.executable, "-m", "clo_lib", "grid", "plan", str(path)], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_toy_world_slice_runs_end_to_end_with_base_and_findings(tmp_path, small_world):
    """The toy grid's code path: toy translation, training, held-out evaluation, reference judge, analysis."""
    data = {"name": "toy-slice", "output_dir": str(tmp_path / "out"), "layers": ["params/presets/toy.yaml"],
            "description": "A two-method slice of the toy world.",
            "overrides": {"model.name_or_path": str(small_world / "base_model"),
                          "eval.prompts": str(small_world / "eval_{lang}.jsonl"), "train.epochs": 1},
            "models": {"toy": {}},
            "slices": [{"languages": ["sw"], "methods": ["sft", "clo"], "sizes": [8, 16]}]}
    path = tmp_path / "toy-slice.yaml"
    path.write_text(yaml.safe_dump(data))
    assert run_grid(load_grid(path), log=lambda m: None) == 0
    results = (tmp_path / "out" / "results.csv").read_text()
    for row in ("toy,sw,,base,0", "toy,sw,16,sft,0", "toy,sw,16,clo,0"):  # the base model has no data size
        assert row in results
    for metric in ("accuracy_tgt", "accuracy_en", "fidelity_tgt", "fidelity_en", "winrate_vs_sft_tgt"):
        assert f",{metric}," in results
    report = (tmp_path / "out" / "report.md").read_text()
    assert "A two-method slice of the toy world." in report and "- Base model toy, Swahili: answers" in report
    assert "CLO against SFT on target-language prompts" in report
    # the premise check comes first, from the base model and SFT alone; then the claims, whatever they say
    assert report.index("## The premise, from the base model and SFT alone") < report.index("## The paper's claims")
    assert "- toy, Swahili (fidelity_tgt@new_phrasing): the base model answers" in report
    assert "SFT " in report and "at 8, " in report and "- Training sanity:" in report
    for claim in ("CLO beats SFT in the target language", "CLO keeps English", "SFT is sensitive to data size",
                  "CLO with half the data matches SFT with all of it", "CRPO critique"):
        assert f"| {claim}" in report


def test_prepare_steps_stream_their_output_and_every_stage_says_when_it_starts(tmp_path, tiny_llama, capfd):
    marker = tmp_path / "prepared"
    script = f"import pathlib; print('step one', flush=True); print('step two'); pathlib.Path({str(marker)!r}).touch()"
    path = write_grid(tmp_path, tiny_llama, prepare=[{"id": "prep", "command": ["python", "-c", script],
                                                      "done": str(marker)}],
                      slices=[{"languages": ["sw"], "methods": ["sft"], "sizes": [4]}])
    lines = []
    assert run_grid(load_grid(path), only=["prepare/*"], log=lines.append) == 0
    out = capfd.readouterr().out
    assert "  prepare/prep | step one" in out and "  prepare/prep | step two" in out
    assert any(line.endswith("prepare/prep: started") for line in lines)
    assert (tmp_path / "out" / "prepare" / "prep.log").read_text() == "step one\nstep two\n"


def test_a_transferred_model_runs_next_to_the_plain_one_and_goes_stale_with_its_transfer(tmp_path, tiny_llama):
    """A model with transfer.* settings gets a transfer stage; its runs train from the transfer's model and carry
    its fingerprint, so a changed transfer setting makes the transfer and all built on it stale, not the plain
    model's runs; the report gains the transfer section and its loss curves."""
    from clo_lib.modeling import tiny

    texts = [f"{i} jumlisha {i + 1} ni {2 * i + 1}" for i in range(40)]
    (tmp_path / "sw.txt").write_text("\n".join(texts))
    tiny.make_tiny_causal_lm(tmp_path / "donor-sw", corpus=texts, vocab_size=300, hidden_size=16)
    transfer = {"method": "mean", "donor": str(tmp_path / "donor-{lang}"), "pretrain_steps": 2, "held_out": 8,
                "pretrain_text": str(tmp_path / "{lang}.txt"), "pretrain_batch_size": 4}
    slices = [{"languages": ["sw"], "methods": ["clo"], "sizes": [4]}]

    def grid_with(**settings):
        return load_grid(write_grid(tmp_path, tiny_llama, slices=slices,
                                    models={"tiny": {}, "tiny-mean": {"transfer": {**transfer, **settings}}}))

    grid = grid_with()
    stage, trained = grid.stages["transfer/tiny-mean-sw-s0"], grid.stages["train/tiny-mean-sw-clo-n4-s0"]
    assert stage.config.transfer.donor == str(tmp_path / "donor-sw") and stage.id in trained.deps
    assert trained.config.model.name_or_path == str(stage.workdir / "model")
    assert grid.stages["train/tiny-sw-clo-n4-s0"].config.model.name_or_path == str(tiny_llama)
    assert run_grid(grid, log=lambda m: None) == 0
    out = tmp_path / "out"
    fingerprint = lambda run: json.loads((out / run / "train_log.json").read_text())["fingerprint"]  # noqa: E731
    first = fingerprint("tiny-mean-sw-clo-n4-s0")["base"]
    assert first and "base" not in fingerprint("tiny-sw-clo-n4-s0")
    report = (out / "report.md").read_text()
    assert "## Vocabulary transfer" in report and "| tiny-mean | sw | mean | 1 |" in report
    assert (out / "figures" / "transfer_curves.png").is_file()

    grid = grid_with(pretrain_steps=3)
    state = grid_state.states(list(grid.stages.values()))
    assert {state[s] for s in ("transfer/tiny-mean-sw-s0", "train/tiny-mean-sw-clo-n4-s0",
                               "evaluate/tiny-mean-sw-clo-n4-s0")} == {"stale"}
    assert state["train/tiny-sw-clo-n4-s0"] == state["evaluate/tiny-sw-clo-n4-s0"] == "done"
    assert run_grid(grid, log=lambda m: None, rerun_stale=True) == 0
    assert fingerprint("tiny-mean-sw-clo-n4-s0")["base"] not in (None, first)
    assert set(grid_state.states(list(grid.stages.values())).values()) == {"done"}


def test_a_grid_defining_a_model_twice_is_refused(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nmodels:\n  a: {}\n  b: {}\n  a: {train.lam: 0.3}\nslices:\n"
                    "  - {languages: [sw], methods: [sft], sizes: [4]}\n")
    with pytest.raises(GridError, match=r"line 5.*models\.a.*twice"):
        load_grid(grid)


def test_slices_that_differ_only_in_overrides_are_distinct_runs(tmp_path, tiny_llama):
    """An ablation as a slice: (clo, sw, 4) and the same with English NLL planned one run, and the second slice's
    settings vanished without a word. Now each overridden slice's runs carry its name (or a digest of its
    overrides), and are judged against the plain SFT run when the slice has none of its own."""
    slices = [{"languages": ["sw"], "methods": ["sft", "clo"], "sizes": [4]},
              {"name": "nll-en", "languages": ["sw"], "methods": ["clo"], "sizes": [4],
               "overrides": {"train.nll_sides": ["en", "tgt"]}},
              {"languages": ["sw"], "methods": ["clo"], "sizes": [4], "overrides": {"train.lam": 0.2}}]
    grid = load_grid(write_grid(tmp_path, tiny_llama, slices=slices))
    trains = {s.id: s for s in grid.stages.values() if s.kind == "train"}
    assert len(trains) == 4
    ablation = trains["train/tiny-sw-clo-n4-s0-nll-en"]
    assert ablation.config.train.nll_sides == ["en", "tgt"] and ablation.facts["variant"] == "nll-en"
    assert trains["train/tiny-sw-clo-n4-s0"].config.train.nll_sides == ["tgt"]
    unnamed = next(s for s in trains.values() if s.config.train.lam == 0.2)
    assert unnamed.facts["variant"].startswith("o") and unnamed.id.endswith(unnamed.facts["variant"])
    evaluation = grid.stages["evaluate/tiny-sw-clo-n4-s0-nll-en"]
    assert evaluation.parameters["reference_run"].endswith("tiny-sw-sft-n4-s0")
    assert evaluation.parameters["variant"] == "nll-en"
    assert "clo+nll-en" in grid_run.table(list(grid.stages.values()), with_state=False)


def test_two_slices_giving_one_run_id_different_settings_are_refused_naming_both(tmp_path, tiny_llama):
    slices = [{"name": "abl", "languages": ["sw"], "methods": ["clo"], "sizes": [4], "overrides": {"train.lam": 0.2}},
              {"name": "abl", "languages": ["sw"], "methods": ["clo"], "sizes": [4], "overrides": {"train.lam": 0.9}}]
    with pytest.raises(GridError, match=r"slices 1 and 2 .*tiny-sw-clo-n4-s0-abl.*different settings"):
        load_grid(write_grid(tmp_path, tiny_llama, slices=slices))


def test_the_report_leaves_out_runs_the_grid_file_no_longer_gives(tmp_path, tiny_llama):
    """The review's path: run every slice, change a setting, rerun the default slice with --rerun-stale: the other
    slice's runs, made under the old setting, stayed in report.md unmarked. Now the report keeps only runs whose
    fingerprint matches the grid file as it is (all slices), and lists the others as stale or unknown."""
    import shutil

    slices = [{"name": "main", "languages": ["sw"], "methods": ["sft"], "sizes": [4]},
              {"name": "more", "languages": ["sw"], "methods": ["sft"], "sizes": [8]}]
    path = write_grid(tmp_path, tiny_llama, slices=slices, default_slices=["main"])
    assert run_grid(load_grid(path, ["all"]), log=lambda m: None) == 0
    out = tmp_path / "out"
    shutil.copytree(out / "tiny-sw-sft-n4-s0", out / "an-old-run")  # a folder the grid file never names
    data = yaml.safe_load(path.read_text())
    data["overrides"]["eval.max_new_tokens"] = 5
    path.write_text(yaml.safe_dump(data))
    assert run_grid(load_grid(path), log=lambda m: None, rerun_stale=True) == 0
    report = (out / "report.md").read_text()
    assert "## Runs left out" in report
    assert "`tiny-sw-sft-n8-s0`: stale" in report and "`an-old-run`: unknown" in report
    names = set(__import__("pandas").read_csv(out / "results.csv")["name"])
    assert names == {"tiny-sw-sft-n4-s0"}


def test_an_always_prepare_step_runs_each_time_and_what_it_rebuilds_makes_its_runs_stale(tmp_path, tiny_llama):
    """A prepare step counted as done once its file existed: a toy world after a version bump stayed, and so did
    everything built on it. A step marked `always` (an idempotent command: the toy world's build, SmolLM2's fetch)
    runs at every `grid run`; when it rebuilds what a run read, the run's content fingerprint makes it stale."""
    version = tmp_path / "version.txt"  # stands for the code version the command builds for
    version.write_text("1")
    prompts = tmp_path / "prompts.jsonl"
    script = ("import json, sys\nv = open(sys.argv[1]).read()\n"
              "open(sys.argv[2], 'w').write(json.dumps({'id': 0, 'prompt_en': 'What is one and ' + v + '?', "
              "'prompt_tgt': 'Moja na ' + v + ' ni ngapi?'}) + '\\n')\nopen(sys.argv[3], 'a').write('ran\\n')\n")
    prepare = [{"id": "prompts", "always": True, "done": str(prompts),
                "command": ["python", "-c", script, str(version), str(prompts), str(tmp_path / "ran.txt")]}]
    path = write_grid(tmp_path, tiny_llama, prepare=prepare,
                      slices=[{"languages": ["sw"], "methods": ["sft"], "sizes": [4]}])
    data = yaml.safe_load(path.read_text())
    data["overrides"]["eval.prompts"] = str(prompts)
    path.write_text(yaml.safe_dump(data))
    assert run_grid(load_grid(path), log=lambda m: None) == 0
    assert run_grid(load_grid(path), log=lambda m: None) == 0  # up to date: it checks, nothing else runs
    assert (tmp_path / "ran.txt").read_text() == "ran\nran\n"
    version.write_text("2")  # a new version of what the step builds
    with pytest.raises(GridError, match="evaluate/tiny-sw-sft-n4-s0"):
        run_grid(load_grid(path), log=lambda m: None)
    state = grid_state.states(list(load_grid(path).stages.values()))
    assert state["evaluate/tiny-sw-sft-n4-s0"] == "stale" and state["train/tiny-sw-sft-n4-s0"] == "done"


def test_a_search_tunes_each_method_on_validation_and_tests_only_the_picks(tmp_path, tiny_llama):
    """Every trial trains (the one at the shared budget is the shared run, not trained twice) and is evaluated on
    the validation prompts only; the best by the grid's metric is evaluated on the test prompts in <run>-best/;
    the results table tells the two views apart. Changing the space or the metric makes the search stale."""
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps({"id": f"v{i}", "prompt_en": f"What is the sum of {i} and 2?",
                                              "prompt_tgt": f"{i} jumlisha 2 ni ngapi?"}) + "\n" for i in range(3)))

    def grid_with(values, metric=("fidelity_tgt", "fidelity_en")):
        return load_grid(write_grid(tmp_path, tiny_llama, search={
            "space": {"train.learning_rate": values}, "metric": list(metric), "prompts": str(validation)}))

    grid = grid_with([3e-4, 1e-3])  # 3e-4: the preset's, the shared budget
    kinds = [s.kind for s in grid.stages.values()]
    assert (kinds.count("train"), kinds.count("validate"), kinds.count("select")) == (4, 4, 2)
    assert "train/tiny-sw-sft-n4-s0-t1" not in grid.stages  # the shared run is trial 1
    assert grid.stages["validate/tiny-sw-clo-n4-s0-t2"].config.eval.prompts == str(validation)
    assert grid.stages["evaluate/tiny-sw-clo-n4-s0-best"].parameters["reference_run"].endswith("sft-n4-s0-best")
    assert run_grid(grid, log=lambda m: None) == 0
    out = tmp_path / "out"
    for run in ("tiny-sw-sft-n4-s0", "tiny-sw-clo-n4-s0"):
        pick = json.loads((out / f"{run}-best" / "pick.json").read_text())
        assert [t["trial"] for t in pick["trials"]] == [run, f"{run}-t2"]
        assert [t["settings"]["train.learning_rate"] for t in pick["trials"]] == [3e-4, 1e-3]
        best = max(pick["trials"], key=lambda t: t["score"])["score"]
        assert pick["picked"] == next(t["trial"] for t in pick["trials"] if t["score"] == best)  # the first best
        assert (out / f"{run}-best" / "model").resolve() == (out / pick["picked"] / "model").resolve()
        assert json.loads((out / f"{run}-t2" / "validation" / "metrics.json").read_text())["metrics"]["prompts"] == 3
        assert not (out / f"{run}-t2" / "metrics.json").exists()  # a trial is never evaluated on test
        assert (out / f"{run}-best" / "metrics.json").is_file()
    status = subprocess.run([sys.executable, "-m", "clo_lib", "grid", "status", str(grid.path)], capture_output=True,
                            text=True, cwd=REPO).stdout
    assert re.search(r"done +select/tiny-sw-clo-n4-s0 .* picked tiny-sw-clo-n4-s0(-t2)? \(train.learning_rate=", status)
    table = __import__("pandas").read_csv(out / "results.csv")
    assert set(table["view"]) == {"shared", "tuned"}
    assert set(grid_state.states(list(grid_with([3e-4, 1e-3]).stages.values())).values()) == {"done"}
    state = grid_state.states(list(grid_with([3e-4, 2e-3]).stages.values()))
    assert state["train/tiny-sw-clo-n4-s0-t2"] == state["select/tiny-sw-clo-n4-s0"] == "stale"
    assert state["evaluate/tiny-sw-clo-n4-s0-best"] == "stale" and state["train/tiny-sw-clo-n4-s0"] == "done"
    state = grid_state.states(list(grid_with([3e-4, 1e-3], metric=["fidelity_tgt"]).stages.values()))
    assert state["select/tiny-sw-clo-n4-s0"] == "stale" and state["validate/tiny-sw-clo-n4-s0-t2"] == "done"


def test_the_python_engine_in_two_workers_writes_what_the_notebooks_write(tmp_path, tiny_llama):
    """The same grid through notebooks (one stage at a time) and through the library in two warm workers (one
    torch thread each): the same stages done, the same metrics."""
    import shutil

    import pandas

    frames = {}
    for engine, workers in (("notebooks", 1), ("python", 2)):
        grid = load_grid(write_grid(tmp_path, tiny_llama))
        assert run_grid(grid, log=lambda m: None, workers=workers, engine=engine) == 0
        assert set(grid_state.states(list(grid.stages.values())).values()) == {"done"}
        frames[engine] = pandas.read_csv(tmp_path / "out" / "results.csv").sort_values(["name", "metric"])
        notebooks = sorted(p.name for p in (tmp_path / "out").rglob("*.ipynb"))
        assert bool(notebooks) == (engine == "notebooks")
        shutil.rmtree(tmp_path / "out")
    first, second = (frames[e].reset_index(drop=True) for e in ("notebooks", "python"))
    pandas.testing.assert_frame_equal(first, second)
