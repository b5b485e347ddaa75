"""benchmarks.lite_accuracy reports, at the checkpoints that collect_results' training-domain
validation chooses, the diagnostics the standard tables do not show."""
import json
import os

from benchmarks import lite_accuracy
from domainbed import model_selection
from domainbed.lib import reporting


def write_run(sweep_dir, name, hparams_seed, trial_seed, checkpoints):
    """checkpoints: (step, validation acc, test acc, confounder acc) per record."""
    out = os.path.join(sweep_dir, name)
    os.makedirs(out)
    args = {"dataset": "SpawriousLiteM2M_hard", "algorithm": "EX2L", "test_envs": [0],
            "hparams_seed": hparams_seed, "trial_seed": trial_seed, "output_dir": out}
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for step, val, test, conf in checkpoints:
            record = {"args": args, "hparams": {}, "step": step, "confounder_acc": conf,
                      "label_map_mass": 0.5}
            for i in range(3):
                value = test if i == 0 else val
                record.update({f"env{i}_in_acc": value, f"env{i}_out_acc": value,
                               f"env{i}_in_wga": value - 0.2, f"env{i}_out_wga": value - 0.2})
            f.write(json.dumps(record) + "\n")


def test_diagnostics_come_from_the_standard_selections_checkpoints(tmp_path, capsys):
    sweep_dir = str(tmp_path / "sweep")
    # trial 0: hparams seed 1 validates better, at its step 100
    write_run(sweep_dir, "a", 0, 0, [(0, 0.5, 0.9, 0.1), (100, 0.6, 0.7, 0.2)])
    write_run(sweep_dir, "b", 1, 0, [(0, 0.7, 0.3, 0.3), (100, 0.8, 0.6, 0.4)])
    # trial 1: hparams seed 0, its step 0
    write_run(sweep_dir, "c", 0, 1, [(0, 0.9, 0.8, 0.5), (100, 0.1, 0.9, 0.6)])
    write_run(sweep_dir, "d", 1, 1, [(0, 0.2, 0.9, 0.7)])
    out = str(tmp_path / "table.json")
    assert lite_accuracy.main(["--sweep_dir", sweep_dir, "--out", out]) == 0
    row = json.load(open(out))["table"]["SpawriousLiteM2M_hard/EX2L"]
    assert [(t["hparams_seed"], t["step"]) for t in row["trials"]] == [(1, 100), (0, 0)]
    assert row["confounder_acc"][0] == (0.4 + 0.5) / 2
    # the same test accuracy as collect_results' selection, trial by trial
    records = reporting.load_records(sweep_dir)
    for trial, (_, trial_records) in zip(row["trials"], records.group("args.trial_seed")):
        expected = model_selection.IIDAccuracySelectionMethod.sweep_acc(trial_records)
        assert trial["aa"] == expected
    assert "EX2L" in capsys.readouterr().out


def test_a_missing_sweep_dir_is_one_line(tmp_path, capsys):
    assert lite_accuracy.main(["--sweep_dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sweep_dir" in err
