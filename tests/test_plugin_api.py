"""The Python API registers installed plugins by itself: a notebook or a user script sees
what the CLI sees, in a fresh interpreter, without calling load_plugins() first."""
import subprocess
import sys

import pytest

CHECKS = {
    "algorithm class": 'from domainbed import algorithms\n'
                       'print(algorithms.get_algorithm_class("EX2L").__name__)',
    "algorithm list": 'from domainbed import algorithms\n'
                      'print("EX2L" in algorithms.ALGORITHMS, list(algorithms.ALGORITHMS)[2])',
    "list operations": 'from domainbed import algorithms\n'
                       'print("EX2L" in algorithms.ALGORITHMS + [], '
                       'algorithms.ALGORITHMS != ["ERM", "GroupDRO"])',
    "dataset class": 'from domainbed import datasets\n'
                     'print(datasets.get_dataset_class("SpawriousLiteM2M_hard").__name__)',
    "hparams": 'from domainbed import hparams_registry\n'
               'hp = hparams_registry.default_hparams("EX2L", "SpawriousM2M_hard")\n'
               'print(hp["ex2l_overlap"], hp["ex2l_lambda"])',
    "featurizer": 'from domainbed import networks\n'
                  'print(type(networks.Featurizer((3, 64, 64), {"featurizer": "lite_cnn"})).__name__)',
}
EXPECTED = {"algorithm class": "EX2L", "algorithm list": "True EX2L",
            "list operations": "True True", "dataset class": "SpawriousLiteM2M_hard", "hparams": "cosine 1.0",
            "featurizer": "LiteCNN"}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_fresh_interpreter_sees_the_plugin(name):
    result = subprocess.run([sys.executable, "-c", CHECKS[name]], capture_output=True,
                            text=True, timeout=120, env={"OMP_NUM_THREADS": "1",
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == EXPECTED[name]


def test_registration_inside_a_lookup_does_not_recurse():
    """register() itself reads ALGORITHMS ("GroupDRO" in ...): loading must not re-enter."""
    from domainbed import algorithms, plugins
    assert plugins.load_plugins() == plugins.load_plugins()
    assert list(algorithms.ALGORITHMS).count("EX2L") == 1
