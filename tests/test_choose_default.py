"""benchmarks.choose_default picks EX2L's default by training-domain worst-group validation
only: the best mean score over the challenges."""
import json
import os

import pytest

from benchmarks import choose_default

# (dataset, algorithm) -> holdout worst-group accuracy of trials 0, 1, 2
SCORES = {
    ("SpawriousLiteO2O_easy", "ERM"): (0.70, 0.72, 0.74),
    ("SpawriousLiteO2O_easy", "EX2L_A"): (0.95, 0.95, 0.95),   # best here ...
    ("SpawriousLiteO2O_easy", "EX2L_B"): (0.75, 0.75, 0.75),
    ("SpawriousLiteM2M_hard", "ERM"): (0.60, 0.62, 0.64),
    ("SpawriousLiteM2M_hard", "EX2L_A"): (0.40, 0.40, 0.40),   # ... worst here: mean 0.675
    ("SpawriousLiteM2M_hard", "EX2L_B"): (0.61, 0.61, 0.61),   # mean 0.68
}


def write_sweep(sweep_dir, test_wga):
    for (dataset, algorithm), scores in SCORES.items():
        for trial, score in enumerate(scores):
            out = os.path.join(sweep_dir, f"{dataset}-{algorithm}-{trial}")
            os.makedirs(out)
            args = {"dataset": dataset, "algorithm": algorithm, "test_envs": [0],
                    "hparams_seed": 0, "trial_seed": trial, "output_dir": out}
            record = {"args": args, "hparams": {}, "step": 100}
            for i in range(3):
                record.update({f"env{i}_in_acc": 0.9, f"env{i}_out_acc": 0.9,
                               f"env{i}_in_wga": score, f"env{i}_out_wga": score})
            record["env0_in_wga"] = test_wga(dataset, algorithm)
            with open(os.path.join(out, "results.jsonl"), "w") as f:
                f.write(json.dumps(record) + "\n")


@pytest.mark.parametrize("favoured", ["EX2L_A", "EX2L_B"])
def test_the_choice_reads_validation_and_never_test_metrics(tmp_path, capsys, favoured):
    sweep_dir, out = str(tmp_path / "sweep"), str(tmp_path / "choice.json")
    write_sweep(sweep_dir, lambda d, a: 0.99 if a == favoured else 0.1)
    assert choose_default.main(["--sweep_dir", sweep_dir, "--out", out]) == 0
    result = json.load(open(out))
    assert result["default"] == "EX2L_B"
    ranking = {r["algorithm"]: r for r in result["ranking"]}
    assert ranking["EX2L_A"]["worst_dataset"] == "SpawriousLiteM2M_hard"
    assert ranking["EX2L_A"]["mean_score"] == pytest.approx((0.95 + 0.40) / 2)
    assert ranking["EX2L_A"]["margins"]["SpawriousLiteM2M_hard"] == pytest.approx(0.40 - 0.62)
    assert "Default: EX2L_B" in capsys.readouterr().out


def test_candidates_can_be_named(tmp_path, capsys):
    sweep_dir, out = str(tmp_path / "sweep"), str(tmp_path / "choice.json")
    write_sweep(sweep_dir, lambda d, a: 0.5)
    assert choose_default.main(["--sweep_dir", sweep_dir, "--out", out,
                                "--candidates", "EX2L_A"]) == 0
    result = json.load(open(out))
    assert result["default"] == "EX2L_A" and [r["algorithm"] for r in result["ranking"]] == \
        ["EX2L_A"]


def test_missing_runs_are_one_line(tmp_path, capsys):
    sweep_dir = str(tmp_path / "sweep")
    write_sweep(sweep_dir, lambda d, a: 0.5)
    assert choose_default.main(["--sweep_dir", sweep_dir, "--candidates", "EX2L_C"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EX2L_C" in err and "run the search" in err
    assert choose_default.main(["--sweep_dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
