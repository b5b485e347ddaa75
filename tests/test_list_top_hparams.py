"""list_top_hparams: runs ranked per selection method, with their hparams and output dirs."""
import json
import os

from domainbed.scripts import list_top_hparams

HPARAMS = {0: {"lr": 0.001, "batch_size": 32}, 1: {"lr": 0.01, "batch_size": 64}}
# hparams_seed -> per step: (out acc of every env, test env 0's in acc, pair runs' in acc)
STEPS = {0: [(0.5, 0.1, 0.5), (0.6, 0.2, 0.25)],
         1: [(0.9, 0.3, 0.75), (0.4, 0.4, 0.0)]}


def write_sweep(root, with_wga=False, algorithm="ERM"):
    for h, steps in STEPS.items():
        for test_envs in ([0], [0, 1], [0, 2]):
            name = f"{algorithm}_h{h}_{''.join(map(str, test_envs))}"
            lines = []
            for step, (out_acc, test_acc, pair_acc) in enumerate(steps):
                record = {
                    "args": {"algorithm": algorithm, "dataset": "Debug28", "hparams_seed": h,
                             "output_dir": f"sweep/{name}", "test_envs": test_envs,
                             "trial_seed": 0},
                    "hparams": HPARAMS[h], "step": step,
                }
                for i in range(3):
                    record[f"env{i}_in_acc"] = test_acc if len(test_envs) == 1 else pair_acc
                    record[f"env{i}_out_acc"] = out_acc
                    if with_wga:
                        record[f"env{i}_in_wga"] = record[f"env{i}_in_acc"] / 2
                        record[f"env{i}_out_wga"] = 1.0 - out_acc
                lines.append(json.dumps(record) + "\n")
            os.makedirs(root / name)
            (root / name / "results.jsonl").write_text("".join(lines))


def run_block(run_acc, h):
    """One run's listing; its output dirs include the two-test-env runs of that hparams seed."""
    hp = HPARAMS[h]
    output_dirs = [f"ERM_h{h}_0", f"ERM_h{h}_01", f"ERM_h{h}_02"]
    text = f"\t{run_acc}\n\t\thparams:\n"
    text += f"\t\t\tbatch_size: {hp['batch_size']}\n\t\t\tlr: {hp['lr']}\n"
    text += "\t\toutput_dirs:\n" + "".join(f"\t\t\tsweep/{d}\n" for d in output_dirs)
    return text


def test_lists_runs_best_first(tmp_path, capsys):
    write_sweep(tmp_path)
    write_sweep(tmp_path, algorithm="GroupDRO")  # filtered out by --algorithm
    list_top_hparams.main(["--input_dir", str(tmp_path), "--dataset", "Debug28",
                           "--algorithm", "ERM", "--test_env", "0"])
    assert capsys.readouterr().out == (
        "Total records: 24\n"
        "Model selection: training-domain validation set\n"
        "trial_seed: 0\n"
        + run_block({"val_acc": 0.9, "test_acc": 0.3}, 1)
        + run_block({"val_acc": 0.6, "test_acc": 0.2}, 0)
        + "Model selection: leave-one-domain-out cross-validation\n"
        "trial_seed: 0\n"
        + run_block({"val_acc": 0.75, "test_acc": 0.3}, 1)
        + run_block({"val_acc": 0.5, "test_acc": 0.1}, 0)
        + "Model selection: test-domain validation set (oracle)\n"
        "trial_seed: 0\n"
        + run_block({"val_acc": 0.6, "test_acc": 0.2}, 0)
        + run_block({"val_acc": 0.4, "test_acc": 0.4}, 1)
    )


def test_worst_group_validation_is_listed_when_records_carry_wga(tmp_path, capsys):
    write_sweep(tmp_path, with_wga=True)
    list_top_hparams.main(["--input_dir", str(tmp_path), "--dataset", "Debug28",
                           "--algorithm", "ERM", "--test_env", "0"])
    out = capsys.readouterr().out
    wgv = out[out.index("Model selection: training-domain worst-group validation set\n"):]
    # 1 - out_acc is best at h0 step 0 (0.5) and h1 step 1 (0.6): h1 wins.
    assert wgv.splitlines()[1:3] == ["trial_seed: 0", "\t{'val_acc': 0.6, 'test_acc': 0.4}"]


def test_test_env_without_single_env_runs_lists_no_run(tmp_path, capsys):
    """Test env 2 only occurs in the {0, 2} runs: a group exists, but nothing is selectable."""
    write_sweep(tmp_path)
    list_top_hparams.main(["--input_dir", str(tmp_path), "--dataset", "Debug28",
                           "--algorithm", "ERM", "--test_env", "2"])
    assert capsys.readouterr().out.splitlines() == [
        "Total records: 12",
        "Model selection: training-domain validation set", "trial_seed: 0",
        "Model selection: leave-one-domain-out cross-validation", "trial_seed: 0",
        "Model selection: test-domain validation set (oracle)", "trial_seed: 0",
    ]


def test_mixed_hparams_within_a_run_is_an_error(tmp_path, capsys):
    write_sweep(tmp_path)
    path = tmp_path / "ERM_h0_0" / "results.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["hparams"] = {"lr": 1.0, "batch_size": 1}
    path.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    assert list_top_hparams.main(["--input_dir", str(tmp_path), "--dataset", "Debug28",
                                  "--algorithm", "ERM", "--test_env", "0"]) == 2
    assert "error: records of hparams_seed 0" in capsys.readouterr().err


def test_missing_input_dir_exits_2(tmp_path):
    assert list_top_hparams.main(["--input_dir", str(tmp_path / "nope"), "--dataset",
                                  "Debug28", "--algorithm", "ERM", "--test_env", "0"]) == 2
