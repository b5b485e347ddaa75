"""`python -m ex2l_domainbed.reproduce`: sweep definitions, their jobs, the four commands.

Every shipped definition in sweeps/ is loaded and checked whole; a definition's jobs are
sweep.py's (the same folders, both ways); bad input is one `error:` line, exit 2 and
nothing written; launch/status/delete_incomplete/collect run on a tiny Debug definition
with the dummy launcher and hand-written records (no training).
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from spawrious_fixture import make_spawrious_tree

from domainbed.scripts import collect_results, sweep
from ex2l_domainbed.datasets.spawrious import SpawriousM2M_hard
from ex2l_domainbed.reproduce import cli, definition, estimate, jobs, preflight

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "sweeps").glob("*.toml"))


def tiny(tmp: Path, sweep_extra: str = "", hparams: str = "", algos: str = "",
         top: str = "", name: str = "tiny.toml") -> str:
    """A small DebugAttr28 definition (ERM and GroupDRO, 2 trials) with text spliced in."""
    text = f"""title = "tiny"
{top}
[sweep]
datasets = ["DebugAttr28"]
test_envs = [0]
n_hparams = 1
n_trials = 2
steps = 5
checkpoint_freq = 2
{sweep_extra}
[hparams]
batch_size = 8
{hparams}
[algorithms.ERM]
[algorithms.GroupDRO]
groupdro_eta = 0.05
{algos}
[[published]]
dataset = "DebugAttr28"
algorithm = "ERM"
aa = [70.0, 1.5]
source = "a test source"
"""
    path = tmp / name
    path.write_text(text)
    return str(path)


def args(tmp: Path, command: str, defn: str, *extra: str) -> list[str]:
    return [command, defn, "--data_dir", str(tmp / "data"), "--output_dir", str(tmp / "out"),
            *extra]


# ------------------------------------------------------------------------------------------
# The shipped definitions


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_definition_is_valid(path):
    d = definition.load(str(path))  # names registered, hparams accepted, test envs in range
    assert jobs.make_jobs(d, "/data", "/out")


def test_the_spawrious_definitions_hold_the_authors_protocol():
    o2o, m2m = definition.load("spawrious_o2o_medium"), definition.load("spawrious_m2m_easy")
    assert o2o.fixed_hparams("GroupDRO")["groupdro_eta"] == 0.0053050580120662895
    assert (o2o.hparams["lr"], o2o.hparams["weight_decay"]) == (1.6629177873519647e-4,
                                                                1.1975155295174919e-6)
    assert (m2m.hparams["lr"], m2m.hparams["weight_decay"]) == (1.653813153854724e-4,
                                                                2.7643974709171963e-5)
    for d in (o2o, m2m):
        assert list(d.algorithms) == ["ERM", "GroupDRO", "EX2L", "AttributeDANN"]
        assert (d.steps, d.checkpoint_freq, d.n_hparams, d.n_trials, d.test_envs) == (
            5001, 100, 1, 3, [0])
        assert d.hparams["batch_size"] == 128 and d.hparams["resnet_dropout"] == 0.1
    published = definition.load("spawrious_m2m_hard").published[0]
    assert (published.aa, published.wga) == ((82.24, 3.87), (66.31, 8.73))
    assert definition.load("spawrious_o2o_easy").published[0].wga is None


def test_dry_run_of_m2m_hard_prints_12_jobs_and_the_estimate_and_writes_nothing(
        tmp_path, run_main, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_main(cli.main, *args(tmp_path, "launch", "spawrious_m2m_hard", "--dry_run"))
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^Not launched: ", result.stdout, re.M)) == 12
    assert "12 jobs: 0 done, 0 incomplete, 12 not launched." in result.stdout
    assert "51 evaluations a run x 50,688 images (~50.7k" in result.stdout
    assert "2.02x what training sees" in result.stdout
    assert "NVIDIA H200:" in result.stdout and "not measured" in result.stdout
    assert "Data loading (decoding images) is not in these figures." in result.stdout
    assert "nothing was written or launched" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_jobs_are_sweep_launch_jobs_both_ways(tmp_path, run_main):
    """One algorithm of spawrious_m2m_hard through sweep.py (dummy launcher): the folders it
    makes are the definition's, reproduce sees them, collect_results reads them."""
    d = definition.load("spawrious_m2m_hard")
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    hp = jobs.hparams_json(d, "GroupDRO")
    result = run_main(sweep.main, "launch", "--datasets", "SpawriousM2M_hard", "--algorithms",
                      "GroupDRO", "--test_envs", "0", "--n_hparams", "1", "--n_trials", "3",
                      "--steps", "5001", "--checkpoint_freq", "100", "--hparams", hp,
                      "--data_dir", data, "--output_dir", out, "--command_launcher", "dummy",
                      "--skip_confirmation")
    assert result.returncode == 0, result.stderr
    ours = [j for j in jobs.make_jobs(d, data, out) if j.train_args["algorithm"] == "GroupDRO"]
    assert {str(p) for p in Path(out).iterdir()} == {j.output_dir for j in ours}
    assert {f"Dummy launcher: {j.command_str}" for j in ours} <= set(result.stdout.splitlines())
    status = run_main(cli.main, *args(tmp_path, "status", "spawrious_m2m_hard"))
    assert status.stdout.count("launched, not started") == 3
    write_run(ours[0], acc=0.5)
    collected = run_main(collect_results.main, "--input_dir", out)
    assert collected.returncode == 0 and "Total records: 1" in collected.stdout


# The sweep that `make demo` ran before it ran sweeps/demo.toml.
DEMO_SWEEP = ("--algorithms ERM GroupDRO AttributeDANN EX2L --datasets SpawriousLiteM2M_hard --test_envs 0 "
              "--data_dir data --output_dir out --command_launcher local --n_hparams 2 "
              "--n_trials 1 --skip_confirmation")


def test_the_demo_definition_is_the_plain_sweep_make_demo_ran(tmp_path):
    """sweeps/demo.toml has the jobs (so the run folders) of that sweep, and make demo runs it."""
    parsed = sweep.build_parser().parse_args(["launch", *shlex.split(DEMO_SWEEP)])
    theirs = sweep.make_args_list(
        n_trials=parsed.n_trials, dataset_names=parsed.datasets, algorithms=parsed.algorithms,
        n_hparams_from=parsed.n_hparams_from, n_hparams=parsed.n_hparams, steps=parsed.steps,
        data_dir=parsed.data_dir, task=parsed.task, holdout_fraction=parsed.holdout_fraction,
        single_test_envs=parsed.single_test_envs, hparams=parsed.hparams,
        test_envs=parsed.test_envs, checkpoint_freq=parsed.checkpoint_freq)
    ours = jobs.make_jobs(definition.load("demo"), "data", "out")
    assert sorted(j.output_dir for j in ours) == sorted(sweep.Job(a, "out").output_dir
                                                        for a in theirs)
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    assert re.search(r"reproduce launch \$\(DEMO\)\s+--command_launcher parallel", makefile)


# ------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def _definition_case(**parts):
    """A `tiny` definition with text spliced in, dry-run launched."""
    return lambda t: args(t, "launch", tiny(t, **parts), "--dry_run")


def _replaced(old: str, new: str):
    """A `tiny` definition with one piece of text replaced, dry-run launched."""
    def argv(t: Path) -> list[str]:
        path = Path(tiny(t))
        path.write_text(path.read_text().replace(old, new))
        return args(t, "launch", str(path), "--dry_run")
    return argv


def _written(text: str, launch_args: tuple[str, ...] = ("--dry_run",)):
    def argv(t: Path) -> list[str]:
        (t / "x.toml").write_text(text)
        return args(t, "launch", str(t / "x.toml"), *launch_args)
    return argv


def _spawrious_partial(t: Path) -> list[str]:
    make_spawrious_tree(t / "data", per_cell=3, pools=("0",), extras=False)
    return args(t, "launch", "spawrious_m2m_hard")


def _lite_over_real(t: Path) -> list[str]:
    (t / "data" / "spawrious224").mkdir(parents=True)
    return args(t, "launch", "demo")


CASES = {
    "unknown name": (lambda t: args(t, "launch", "spawrious_m2m_hardd", "--dry_run"),
                     ["unknown sweep definition 'spawrious_m2m_hardd'",
                      "Did you mean 'spawrious_m2m_hard'", "Known names: celeba, colored_digits_lite,"]),
    "toml syntax": (_written('title = "x"\n[sweep\ndatasets = ["Debug28"]\n'),
                    ["x.toml is not valid TOML", "line 2"]),
    "typo in [sweep]": (_definition_case(sweep_extra="n_trial = 3"),
                        ["unknown key 'n_trial' in [sweep] of", "did you mean 'n_trials'?"]),
    "typo at the top": (_definition_case(top="[hparam]"),
                        ["unknown key 'hparam' in the top level", "did you mean 'hparams'?"]),
    "string for an int": (_replaced("n_trials = 2", 'n_trials = "2"'),
                          ["n_trials in [sweep]", "must be an integer, got '2'"]),
    "algorithms as a list": (_written('algorithms = ["ERM"]\n[sweep]\ndatasets = ["Debug28"]\n'),
                             ["algorithms in the top level", "must be a table"]),
    "unknown algorithm": (_definition_case(algos="[algorithms.ERMM]"),
                          ["Algorithm not found: ERMM", "Did you mean 'ERM'"]),
    "unknown dataset": (_replaced('["DebugAttr28"]', '["DebugAttr29"]'),
                        ["Dataset not found: DebugAttr29", "Did you mean 'DebugAttr28'"]),
    "unknown hparam": (_definition_case(hparams="lrr = 1e-3"),
                       ["unknown hparam 'lrr' in [hparams]", "did you mean 'lr'?"]),
    "hparam of another algorithm": (_definition_case(hparams="groupdro_eta = 0.1"),
                                    ["unknown hparam 'groupdro_eta' in [hparams]",
                                     "Hparams of ERM on DebugAttr28"]),
    "wrong-typed hparam": (_definition_case(algos='[algorithms.EX2L]\nex2l_lambda = "big"'),
                           ["ex2l_lambda = 'big' in [algorithms.EX2L]", "must be a number"]),
    "unknown selection": (_definition_case(sweep_extra='selection = ["IIDAccuracySelection"]'),
                          ["unknown selection method 'IIDAccuracySelection'",
                           "Did you mean 'IIDAccuracySelectionMethod'"]),
    "test env out of range": (_replaced("test_envs = [0]", "test_envs = [5]"),
                              ["test_envs 5 in [sweep]", "out of range for DebugAttr28"]),
    "published typo": (_replaced("source =", "sorce ="),
                       ["unknown key 'sorce' in [[published]] entry 1",
                        "did you mean 'source'?"]),
    "extends a missing file": (_written('extends = "base.toml"\n'),
                               ["extends = 'base.toml'", "no such file"]),
    "unknown launcher": (lambda t: args(t, "launch", tiny(t), "--command_launcher", "nope"),
                         ["unknown --command_launcher 'nope'", "Known: local, dummy"]),
    "no spawrious data": (lambda t: args(t, "launch", "spawrious_m2m_hard"),
                          ["Spawrious data not found", "domainbed.scripts.download"]),
    "partial spawrious data": (_spawrious_partial,
                               ["has 3 images, SpawriousM2M_hard needs 3168"]),
    "real data as lite data": (_lite_over_real, ["is not Spawrious-Lite data"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_nothing_is_written(case, tmp_path, run_main):
    argv, phrases = CASES[case]
    args_ = argv(tmp_path)
    made = sorted(tmp_path.rglob("*"))
    result = run_main(cli.main, *args_)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert sorted(tmp_path.rglob("*")) == made, "wrote files"
    assert not result.stdout.strip(), "printed jobs before failing"


def test_slurm_without_sbatch_or_submitit_is_refused(tmp_path, run_main, monkeypatch):
    defn = tiny(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))
    monkeypatch.delenv("DOMAINBED_SUBMITIT_CLUSTER", raising=False)
    monkeypatch.setattr(preflight, "installed", lambda module: True)
    result = run_main(cli.main, *args(tmp_path, "launch", defn, "--command_launcher", "slurm"))
    assert result.returncode == 2 and "sbatch is not on PATH" in result.stderr
    monkeypatch.setattr(preflight, "installed", lambda module: False)
    result = run_main(cli.main, *args(tmp_path, "launch", defn, "--command_launcher", "slurm"))
    assert result.returncode == 2 and "needs submitit" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cheap_spawrious_check_passes_on_complete_data(tmp_path):
    class SmallM2MHard(SpawriousM2M_hard):
        BASE_COUNT = 3
    make_spawrious_tree(tmp_path, per_cell=3, pools=("0",), extras=False)
    preflight.check_spawrious(SmallM2MHard, str(tmp_path))


def test_missing_imagenet_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    d = definition.load("spawrious_m2m_hard")
    with pytest.raises(preflight.UserInputError, match="resnet50-.*does not exist"):
        preflight.check_weights(d, [j.train_args for j in jobs.make_jobs(d, "/d", "/o")][:1])


# ------------------------------------------------------------------------------------------
# The commands on a tiny definition


def write_run(job: sweep.Job, acc: float, done: bool = True, **changed_hparams) -> None:
    """One checkpoint record: test env 0 at `acc` (worst group 0.1 lower), training envs at
    0.9, the hparams train.py gives the job (with `changed_hparams` over them); plus `done`."""
    os.makedirs(job.output_dir, exist_ok=True)
    record = {"args": job.train_args, "step": 4,
              "hparams": {**jobs.job_hparams(job.train_args), **changed_hparams}}
    for i in range(3):
        value = acc if i == 0 else 0.9
        record.update({f"env{i}_in_acc": value, f"env{i}_out_acc": value,
                       f"env{i}_in_wga": value - 0.1, f"env{i}_out_wga": value - 0.1})
    with open(os.path.join(job.output_dir, "results.jsonl"), "w") as f:
        f.write(json.dumps(record) + "\n")
    Path(job.output_dir, "train.lock").write_text("")  # what a train.py leaves behind
    if done:
        Path(job.output_dir, "done").write_text("done")


def test_launch_status_delete_collect(tmp_path, run_main):
    defn = tiny(tmp_path)
    launched = run_main(cli.main, *args(tmp_path, "launch", defn, "--command_launcher",
                                        "dummy", "--skip_confirmation"))
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count("Dummy launcher: python -m domainbed.scripts.train") == 4
    assert "4 jobs: 0 done, 0 incomplete, 4 not launched." in launched.stdout
    assert "mnist_cnn at 28 px" in launched.stdout and "unknown (no figure" in launched.stdout

    erm0, erm1, dro0, dro1 = jobs.make_jobs(definition.load(defn), str(tmp_path / "data"),
                                            str(tmp_path / "out"))
    write_run(erm0, 0.8)
    write_run(erm1, 0.6)
    write_run(dro0, 0.5, done=False)
    Path(dro0.output_dir, "resume.pkl").write_bytes(b"")

    status = run_main(cli.main, *args(tmp_path, "status", defn)).stdout
    assert f"done: {erm0.output_dir} (DebugAttr28 ERM test_envs=[0]" in status
    assert (f"incomplete (last recorded step 4; resumable: launch resumes it): "
            f"{dro0.output_dir}") in status
    assert f"launched, not started (queued, or it never ran: delete_incomplete clears it for " \
           f"launch to start it again): {dro1.output_dir}" in status
    assert "4 jobs: 2 done, 2 incomplete, 0 not launched (of them 0 running, 1 resumable)." \
        in status

    dry = run_main(cli.main, *args(tmp_path, "delete_incomplete", defn, "--dry_run"))
    assert "Dry run: nothing was deleted." in dry.stdout and os.path.isdir(dro1.output_dir)
    deleted = run_main(cli.main, *args(tmp_path, "delete_incomplete", defn,
                                       "--skip_confirmation"))
    assert deleted.returncode == 0, deleted.stderr
    assert not os.path.exists(dro1.output_dir) and os.path.isdir(dro0.output_dir)

    collected = run_main(cli.main, *args(tmp_path, "collect", defn))
    assert collected.returncode == 0, collected.stderr
    standard = run_main(collect_results.main, "--input_dir", str(tmp_path / "out")).stdout
    assert collected.stdout.startswith(standard)  # collect_results' tables, byte for byte
    table = collected.stdout[len(standard):]
    assert "tiny (" in table and "2 of 4 jobs done (the sweep is incomplete)" in table
    erm = re.search(r"^DebugAttr28 +ERM +2/2 +2 .*$", table, re.M).group(0).split("  ")
    cells = [c.strip() for c in erm if c.strip()]
    assert cells[4:] == ["70.0 +/- 10.0", "60.0 +/- 10.0", "70 +/- 1.5", "-", "[1]"]
    assert re.search(r"^DebugAttr28 +GroupDRO +0/2 +1 +50\.0 +40\.0 +- +- +-$", table, re.M)
    assert "[1] a test source" in table


def test_finished_runs_with_other_hparams_are_named_and_refused(tmp_path, run_main):
    """A default that changed since a run finished leaves its folder hash as it was: status
    names the run, collect warns, launch refuses the folder in one line and deletes nothing."""
    defn = tiny(tmp_path)
    erm0, erm1, *_ = jobs.make_jobs(definition.load(defn), str(tmp_path / "data"),
                                    str(tmp_path / "out"))
    write_run(erm0, 0.8, lr=0.5)
    write_run(erm1, 0.6)
    status = run_main(cli.main, *args(tmp_path, "status", defn)).stdout
    assert f"done (stale: other lr than this code gives): {erm0.output_dir}" in status
    assert f"done: {erm1.output_dir}" in status
    collected = run_main(cli.main, *args(tmp_path, "collect", defn))
    assert collected.returncode == 0 and "warning: 1 of these runs" in collected.stderr
    launched = run_main(cli.main, *args(tmp_path, "launch", defn, "--command_launcher",
                                        "dummy", "--skip_confirmation"))
    assert launched.returncode == 2 and launched.stderr.count("\n") == 1
    assert "1 finished runs" in launched.stderr and "new --output_dir" in launched.stderr
    assert "Dummy launcher" not in launched.stdout and os.path.isdir(erm0.output_dir)


def test_collect_reads_only_the_definitions_runs(tmp_path, run_main):
    defn = tiny(tmp_path)
    other = sweep.Job({"dataset": "DebugAttr28", "algorithm": "ERM", "test_envs": [0],
                       "hparams_seed": 0, "trial_seed": 7}, str(tmp_path / "out"))
    write_run(other, 0.1)
    first = jobs.make_jobs(definition.load(defn), str(tmp_path / "data"),
                           str(tmp_path / "out"))[0]
    write_run(first, 0.8)
    result = run_main(cli.main, *args(tmp_path, "collect", defn))
    assert "Total records: 1" in result.stdout and "80.0" in result.stdout


def test_answering_no_launches_nothing(tmp_path, run_main, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    result = run_main(cli.main, *args(tmp_path, "launch", tiny(tmp_path), "--command_launcher",
                                      "dummy"))
    assert result.returncode == 0 and "Nevermind" in result.stdout
    assert not (tmp_path / "out").exists()


def test_ctrl_c_is_one_line_and_130(tmp_path, run_main, monkeypatch):
    def interrupted(jobs_, launcher):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep.Job, "launch", staticmethod(interrupted))
    result = run_main(cli.main, *args(tmp_path, "launch", tiny(tmp_path), "--command_launcher",
                                      "dummy", "--skip_confirmation"))
    assert result.returncode == 130
    assert [line for line in result.stderr.splitlines() if line] == [
        "error: interrupted during launch. Finished jobs are kept; rerun the same command "
        "(interrupted jobs resume from their last checkpoint)."]


def test_extends_merges_tables_and_this_file_wins(tmp_path):
    base = Path(tiny(tmp_path, name="base.toml"))
    (tmp_path / "child.toml").write_text(
        'extends = "base.toml"\ntitle = "child"\n[sweep]\nn_trials = 1\n'
        '[algorithms.GroupDRO]\ngroupdro_eta = 0.2\n')
    d = definition.load(str(tmp_path / "child.toml"))
    assert (d.title, d.n_trials, d.steps) == ("child", 1, 5)
    assert d.fixed_hparams("GroupDRO") == {"batch_size": 8, "groupdro_eta": 0.2}
    assert base.exists() and len(d.published) == 1


# ------------------------------------------------------------------------------------------
# The estimate's figures


@pytest.mark.parametrize("steps, freq, n", [(5001, 100, 51), (600, 100, 7), (10, 3, 4),
                                            (11, 3, 5), (1, 100, 1)])
def test_evaluations_per_run_follow_train_py(steps, freq, n):
    assert estimate.evaluations(steps, freq) == n


def test_measured_figures_are_the_benchmark_files_numbers():
    for figure in estimate.MEASURED:
        value = json.loads((REPO / figure.json_file).read_text())
        for key in figure.json_keys:
            value = value[key]
        assert figure.ms_per_image == pytest.approx(value / figure.images), figure
    derived = [f for f in estimate.FIGURES if f.json_file is None]
    assert derived and all(f.source == estimate.DERIVED_EVAL for f in derived)


def test_eval_pass_benchmark_writes_its_json(tmp_path, run_main):
    from benchmarks import eval_pass
    out = tmp_path / "eval_pass.json"
    result = run_main(eval_pass.main, "--device", "cpu", "--models", "lite_cnn", "--warmup",
                      "0", "--rounds", "1", "--keep_malloc", "--out", str(out))
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())["results"]["lite_cnn"]
    assert row["batch_size"] == 64 and row["images_per_s"] > 0


def test_queued_slurm_jobs_are_shown_and_not_submitted_again(tmp_path, run_main, monkeypatch):
    from domainbed import command_launchers
    defn = tiny(tmp_path)
    run_main(cli.main, *args(tmp_path, "launch", defn, "--command_launcher", "dummy",
                             "--skip_confirmation"))
    all_jobs = jobs.make_jobs(definition.load(defn), str(tmp_path / "data"),
                              str(tmp_path / "out"))
    for job in all_jobs:  # each started and stopped (e.g. preempted)
        Path(job.output_dir, "train.lock").write_text("")
    queued = all_jobs[0]
    monkeypatch.setattr(command_launchers, "submitit_state",
                        lambda out: "PENDING" if out == queued.output_dir else None)
    status = run_main(cli.main, *args(tmp_path, "status", defn)).stdout
    assert f"queued (no record yet; the scheduler will run it): {queued.output_dir}" in status
    assert "[scheduler: PENDING]" in status
    again = run_main(cli.main, *args(tmp_path, "launch", defn, "--command_launcher", "dummy",
                                     "--skip_confirmation"))
    assert again.stdout.count("Dummy launcher:") == 3, again.stdout + again.stderr
    assert queued.output_dir not in "".join(
        line for line in again.stdout.splitlines() if line.startswith("Dummy launcher:"))


def test_lite_data_is_generated_once_before_launching(tmp_path, run_main, monkeypatch):
    calls = []

    def generate(out):
        calls.append(out)
        os.makedirs(os.path.join(out, "spawrious224"))
    monkeypatch.setattr(preflight.spawrious_lite, "generate", generate)
    result = run_main(cli.main, *args(tmp_path, "launch", "demo", "--command_launcher", "dummy",
                                      "--skip_confirmation"))
    assert result.returncode == 0, result.stderr
    assert calls == [str(tmp_path / "data")] and result.stdout.count("Dummy launcher:") == 8
