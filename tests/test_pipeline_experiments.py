"""Experiment recipes: `[pipeline] stages` picks the stages; the sweep and the Instruct chain as stages."""

from __future__ import annotations

import argparse
import csv
import json
import tomllib
from pathlib import Path

import pytest

from tinystories.config import add_options, build, options_from, to_toml
from tinystories.data.instruct import eval_sets, parse_instruct
from tinystories.errors import UserError
from tinystories.pipeline import PipelineConfig, closing_note, load_recipe, run_pipeline, selected_stages

pytestmark = pytest.mark.usefixtures("one_thread")

# The micro recipe's corpus and tokenizer, the first steps of every experiment here.
CORPUS = {"synth": {"backend": "procedural", "n": 200, "seed": 0}, "tokenize": {"vocab_size": 300, "val_fraction": 0.1}}
TINY_MODEL = {"d_model": 16, "n_layer": 1, "n_head": 2, "n_kv_head": 2, "max_seq_len": 256}  # fits a set's prompt
TINY_TRAIN = {"batch_size": 4, "lr": 2e-3, "eval_interval": 0, "eval_tokens": 2000, "ckpt_interval": 5,
              "log_interval": 5, "progress": False}


def write_recipe(path: Path, sections: dict) -> str:
    path.write_text(to_toml(sections))
    return str(path)


def test_stages_are_run_in_the_pipelines_order_and_need_what_they_read(tmp_path: Path) -> None:
    assert [s.name for s in selected_stages(("sweep", "tokenize", "synth"))] == ["synth", "tokenize", "sweep"]
    with pytest.raises(UserError, match="unknown stage 'sweeps'"):
        selected_stages(("synth", "tokenize", "sweeps"))
    with pytest.raises(UserError, match="finetune reads what instruct makes; add instruct"):
        selected_stages(("synth", "tokenize", "train", "finetune"))
    recipe = write_recipe(tmp_path / "r.toml", {**CORPUS, "pipeline": {"stages": ["synth", "sweep"]}})
    with pytest.raises(UserError, match="sweep reads what tokenize makes"):
        run_pipeline(PipelineConfig(recipe=recipe, out=str(tmp_path / "p")))
    assert not (tmp_path / "p").exists()  # refused before anything was made
    for section, key in (("sweep", "out"), ("finetune", "init"), ("eval_instruct", "sets"), ("instruct", "data")):
        bad = write_recipe(tmp_path / f"{section}.toml", {**CORPUS, section: {key: "x"}})
        with pytest.raises(UserError, match=rf"\[{section}\] may not set {key}: the pipeline chooses it"):
            load_recipe(bad)


def test_sweep_recipe_trains_the_grid_and_a_rerun_skips_it(tmp_path: Path) -> None:
    sweep = {"grid": "d_model=16;n_layer=1,2;n_head=2;n_kv_head=2;max_seq_len=32", "tokens": 512, "batch_size": 4,
             "checkpoints": 2, "eval_stories": 4, "real": "", "probe_sets": "fact", "probe_n": 0}
    recipe = write_recipe(tmp_path / "s.toml", {"pipeline": {"stages": ["synth", "tokenize", "sweep"]}, **CORPUS,
                                                "sweep": sweep})
    root = tmp_path / "p"
    result = run_pipeline(PipelineConfig(recipe=recipe, out=str(root), device="cpu"))
    assert result["stages"] == {"synth": "done", "tokenize": "done", "sweep": "done"}
    assert not (root / "model").exists()  # no train stage in this recipe
    with open(root / "sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["n_layer1-seed0", "n_layer2-seed0"]
    assert all(int(r["tokens"]) >= 512 for r in rows)
    spec = json.loads((root / "sweep" / "sweep.json").read_text())["settings"]
    assert spec["data"] == str(root / "data") and spec["tokens"] == 512
    assert (root / "sweep" / "report.html").is_file() and (root / "sweep" / "plots" / "frontier.png").is_file()
    note = closing_note(root).splitlines()
    assert note[1].startswith("sweep: 2 of 2 points finished")
    assert note[-2].endswith(str(root / "sweep" / "report.html")) and note[-1].startswith(f"outputs: {root / 'sweep'};")

    again = run_pipeline(PipelineConfig(recipe=recipe, out=str(root), device="cpu"))
    assert set(again["stages"].values()) == {"skipped"}
    # A result-deciding change starts the sweep over; the corpus and dataset stay.
    changed = write_recipe(tmp_path / "s2.toml", {"pipeline": {"stages": ["synth", "tokenize", "sweep"]}, **CORPUS,
                                                  "sweep": {**sweep, "grid": "d_model=16;n_layer=1;n_head=2;"
                                                            "n_kv_head=2;max_seq_len=32"}})
    third = run_pipeline(PipelineConfig(recipe=changed, out=str(root), device="cpu"))
    assert third["stages"] == {"synth": "skipped", "tokenize": "skipped", "sweep": "done"}
    points = [p.name for p in (root / "sweep" / "points").iterdir()]
    assert points == ["d_model16-n_layer1-n_head2-n_kv_head2-max_seq_len32-seed0"]  # the old points are gone
    # More seeds extend it: the trained point stays as it is.
    trained = (root / "sweep" / "points" / points[0] / "sweep" / "train.json").stat().st_mtime_ns
    more = tomllib.loads(Path(changed).read_text())
    more["sweep"]["seeds"] = 2
    fourth = run_pipeline(PipelineConfig(recipe=write_recipe(tmp_path / "s3.toml", more), out=str(root), device="cpu"))
    assert fourth["stages"]["sweep"] == "done" and fourth["records"]["sweep"]["summary"]["trained"] == 1
    assert (root / "sweep" / "points" / points[0] / "sweep" / "train.json").stat().st_mtime_ns == trained


def test_eval_sets_ask_for_words_and_a_sentence_with_features_or_summary() -> None:
    records = [{"index": i, "story": f"Tom had a red ball {i}. He threw the ball far. Then he ran home happy.",
                "words": ["ball", "throw", "red"], "features": ["Dialogue"], "summary": f"Tom plays {i}."}
               for i in range(5)]
    sets = eval_sets(records, n=4, seed=3)
    assert [e["id"] for e in sets["id"]] == ["id-000", "id-001", "id-002", "id-003"]
    for kind, extra, absent in (("id", "Features", "Summary"), ("ood", "Summary", "Features")):
        for entry in sets[kind]:
            assert entry["instruct"].endswith("Story:")
            rec = parse_instruct(entry["instruct"])
            assert sorted(rec.order) == sorted(["Words", "Random sentence", extra]) and absent not in rec.order
            assert rec.words == ["ball", "throw", "red"] and rec.story == ""
            assert rec.random_sentence in ("He threw the ball far.", "Then he ran home happy.")
    assert eval_sets(records, n=4, seed=3) == sets  # a pure function of the records and the seed
    with pytest.raises(UserError, match="1 held-out stories lack a summary or words"):
        eval_sets([*records[:2], {**records[2], "summary": ""}], n=3)


def test_instruct_recipe_fine_tunes_the_story_model_and_grades_both(tmp_path: Path) -> None:
    sections = {
        "pipeline": {"stages": ["synth", "tokenize", "train", "instruct", "finetune", "eval_instruct"]},
        **CORPUS,
        "model": TINY_MODEL,
        "train": {**TINY_TRAIN, "max_steps": 10, "seed": 1},
        "instruct": {"ood": True},
        "instruct_sets": {"n": 3, "start": 5000},
        "finetune": {**TINY_TRAIN, "max_steps": 5, "seed": 2},
        "eval_instruct": {"completions": 1, "max_new_tokens": 8, "bootstrap": 100},
    }
    recipe = write_recipe(tmp_path / "i.toml", sections)
    root = tmp_path / "p"
    result = run_pipeline(PipelineConfig(recipe=recipe, out=str(root), device="cpu"))
    assert set(result["stages"].values()) == {"done"} and len(result["stages"]) == 6
    inst = root / "instruct"
    # The Instruct records are the corpus's stories, OOD style, tokenized with the story model's tokenizer.
    records = [json.loads(line) for line in (inst / "corpus" / "stories_0000.jsonl").read_text().splitlines()]
    assert len(records) == 200
    assert not any({"Words", "Summary"} <= set(parse_instruct(r["instruct"]).order) for r in records)
    tok = lambda d: json.loads((d / "meta.json").read_text())["tokenizer_sha256"]  # noqa: E731
    assert tok(inst / "data") == tok(root / "data")
    held = [json.loads(line) for line in (inst / "heldout" / "stories_0000.jsonl").read_text().splitlines()]
    assert [r["index"] for r in held] == [5000, 5001, 5002]
    assert len((inst / "sets" / "ood.jsonl").read_text().splitlines()) == 3
    # The fine-tuned model starts from the story model's weights and records it.
    config = tomllib.loads((inst / "model" / "config.toml").read_text())
    assert config["train"]["init"].startswith(str(root / "model") + ":")
    assert config["model"]["d_model"] == 16
    for label, run in (("story", root / "model"), ("instruct", inst / "model")):
        for kind in ("id", "ood"):
            r = json.loads((inst / "eval" / f"{label}-{kind}.json").read_text())
            assert r["run"] == str(run) and r["sets"]["n"] == 3
            assert r["sets"]["source"] == str(inst / "sets" / f"{kind}.jsonl")
            assert set(r["checks"]) == {"all_words", "words_present", "sentence"}
    record = result["records"]["eval_instruct"]["summary"]
    assert set(record) == {"story-id", "story-ood", "instruct-id", "instruct-ood"}
    note = closing_note(root)
    assert "\n  story model, in-distribution: stories with all words " in note and "\n  fine-tuned, OOD (Words + Summary): stories with all words " in note

    again = run_pipeline(PipelineConfig(recipe=recipe, out=str(root), device="cpu"))
    assert set(again["stages"].values()) == {"skipped"}
    # More fine-tuning continues the fine-tuned run (an operational change) and grades again; the story
    # model is untouched.
    longer = write_recipe(tmp_path / "i2.toml", {**sections, "finetune": {**sections["finetune"], "max_steps": 10}})
    third = run_pipeline(PipelineConfig(recipe=longer, out=str(root), device="cpu"))
    assert third["stages"]["train"] == "skipped" and third["stages"]["instruct"] == "skipped"
    assert third["stages"]["finetune"] == "done" and third["stages"]["eval_instruct"] == "done"
    assert third["records"]["finetune"]["summary"]["resumed_from_step"] == 5
    assert third["records"]["finetune"]["summary"]["step"] == 10


def test_curriculum_ab_recipe_runs_the_arms_and_more_seeds_extend_it(tmp_path: Path) -> None:
    ab = {"arms": ["random", "length-reverse"], "seeds": [1], "shape": "d_model=16;n_layer=1;n_head=2;n_kv_head=2;"
          "max_seq_len=32", "batch_size": 4, "steps": 10, "eval_every": 5, "eval_tokens": 2000}
    sections = {"pipeline": {"stages": ["synth", "tokenize", "curriculum_ab"]}, **CORPUS, "curriculum_ab": ab}
    root = tmp_path / "p"
    result = run_pipeline(PipelineConfig(recipe=write_recipe(tmp_path / "a.toml", sections), out=str(root)))
    assert result["stages"]["curriculum_ab"] == "done"
    summary = result["records"]["curriculum_ab"]["summary"]
    assert set(summary["arms"]) == {"random", "length-reverse"}
    assert summary["arms"]["random"]["steps_to_target"] == 10  # the random arm reaches its own final loss last
    config = tomllib.loads((root / "ab" / "length-reverse-s1" / "config.toml").read_text())
    assert config["train"]["curriculum"] == "length" and config["train"]["curriculum_reverse"] is True
    assert config["train"]["data"] == str(root / "data")
    assert "curriculum A/B:" in closing_note(root) and "| length-reverse |" in closing_note(root)
    first = (root / "ab" / "random-s1" / "metrics.jsonl").stat().st_mtime_ns

    # A second seed extends the A/B: the seed-1 runs are kept, not trained again.
    more = {**sections, "curriculum_ab": {**ab, "seeds": [1, 2]}}
    again = run_pipeline(PipelineConfig(recipe=write_recipe(tmp_path / "b.toml", more), out=str(root)))
    assert again["stages"]["curriculum_ab"] == "done"
    assert (root / "ab" / "random-s1" / "metrics.jsonl").stat().st_mtime_ns == first
    assert (root / "ab" / "random-s2" / "metrics.jsonl").is_file()
    assert json.loads((root / "ab" / "results.json").read_text())["seeds"] == [1, 2]


def test_set_changes_recipe_values_and_the_folder_records_them(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "c.toml", {"pipeline": {"stages": ["synth", "tokenize"]}, **CORPUS})
    root = tmp_path / "p"
    cfg = build(PipelineConfig, options_from(_parse(["--recipe", recipe, "--out", str(root), "--set", "synth.n=50",
                                                     "tokenize.val_fraction=0.2", "--set", "synth.seed=3"]),
                                             PipelineConfig))
    assert cfg.set == ("synth.n=50", "tokenize.val_fraction=0.2", "synth.seed=3")
    run_pipeline(cfg)
    job = json.loads((root / "corpus" / "job.json").read_text())
    assert job["n"] == 50 and job["seed"] == 3
    saved = (root / "recipe.toml").read_text()
    assert "#   --set synth.n=50" in saved
    assert tomllib.loads(saved)["synth"] == {"backend": "procedural", "n": 50, "seed": 3}
    assert set(run_pipeline(cfg)["stages"].values()) == {"skipped"}
    # Counts may be written as on the command line; a bad override is one line.
    assert load_recipe(recipe, ("tokenize.train_bytes=2M",)).sections["tokenize"]["train_bytes"] == 2_000_000
    for bad, message in (("synth.n", "write SECTION.FIELD=VALUE"), ("synth.nope=1", "no field 'nope'"),
                         ("sweep.out=x", "may not set out"), ("pipelines.x=1", "unknown section")):
        with pytest.raises(UserError, match=message):
            load_recipe(recipe, (bad,))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, PipelineConfig)
    return parser.parse_args(argv)
