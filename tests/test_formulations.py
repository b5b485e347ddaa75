"""EX2L formulations are algorithms of their own: fixed ex2l_ hparams as defaults, kept fixed
by the random search, overridable for ablations; each trains and is a row of its own."""
import json

import pytest

from domainbed import algorithms, hparams_registry
from domainbed.scripts import train
from ex2l_domainbed.algorithm import EX2L, define_ex2l
from ex2l_domainbed.formulation_values import DEFAULT_FORMULATION, FORMULATION_VALUES
from ex2l_domainbed.formulations import FORMULATIONS

DATASET = "SpawriousLiteM2M_hard"


@pytest.mark.parametrize("name", ["EX2L", *sorted(FORMULATIONS)])
def test_formulation_fixes_its_hparams_and_searches_the_rest(name):
    cls = algorithms.get_algorithm_class(name)
    assert issubclass(cls, EX2L) and name in algorithms.ALGORITHMS
    fixed = cls.FIXED_HPARAMS
    defaults = hparams_registry.default_hparams(name, DATASET)
    plain = hparams_registry.default_hparams("EX2L_Literal", DATASET)
    assert {k: defaults[k] for k in fixed} == fixed
    assert {k: v for k, v in defaults.items() if k not in fixed} == \
        {k: v for k, v in plain.items() if k not in fixed}
    for seed in (1, 2, 3):
        drawn = hparams_registry.random_hparams(name, DATASET, seed)
        reference = hparams_registry.random_hparams("EX2L_Literal", DATASET, seed)
        assert {k: drawn[k] for k in fixed} == fixed
        # the same seed draws the same values of the searched hparams (paired comparisons)
        assert {k: v for k, v in drawn.items() if k not in fixed} == \
            {k: v for k, v in reference.items() if k not in fixed}


def test_ex2l_runs_the_default_formulation_and_the_literal_one_keeps_define_ex2ls_values():
    assert list(FORMULATIONS) == list(FORMULATION_VALUES)
    assert DEFAULT_FORMULATION in FORMULATIONS and DEFAULT_FORMULATION != "EX2L_Literal"
    for seed in (0, 1, 2):
        ours = hparams_registry.random_hparams("EX2L", DATASET, seed) if seed else \
            hparams_registry.default_hparams("EX2L", DATASET)
        chosen = hparams_registry.random_hparams(DEFAULT_FORMULATION, DATASET, seed) if seed \
            else hparams_registry.default_hparams(DEFAULT_FORMULATION, DATASET)
        assert ours == chosen
    declared = {}
    define_ex2l(lambda name, default, random_fn, **spec: declared.__setitem__(name, default))
    literal = hparams_registry.default_hparams("EX2L_Literal", DATASET)
    assert {k: literal[k] for k in declared} == declared
    assert literal["ex2l_confounder_grad"] is True and literal["ex2l_detach_label"] is False


def test_formulations_are_listed_after_ex2l_and_before_the_adversary():
    names = list(algorithms.ALGORITHMS)
    i = names.index("EX2L")
    assert names[i + 1:i + 1 + len(FORMULATIONS)] == list(FORMULATIONS)
    assert names[i + 1 + len(FORMULATIONS)] == "AttributeDANN"


def test_a_formulation_trains_and_an_override_still_applies(tmp_path, run_main):
    out = tmp_path / "run"
    result = run_main(train.main, "--dataset", "DebugAttr28", "--algorithm", "EX2L_FeaturesFast",
                      "--steps", "2", "--checkpoint_freq", "1", "--test_envs", "0",
                      "--hparams", '{"batch_size": 8, "ex2l_confounder_lr_mult": 3.0}',
                      "--output_dir", str(out), "--skip_model_save")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["args"]["algorithm"] == "EX2L_FeaturesFast"
    assert record["hparams"]["ex2l_confounder_lr_mult"] == 3.0
    assert record["hparams"]["ex2l_detach_label"] is True
    assert "confounder_acc" in record
