"""What `launch` checks on this machine before it writes anything: the launcher can run here,
each dataset's data is in --data_dir, and the ImageNet weights the jobs load are in place.

Cheap on purpose: Spawrious folders are listed and counted the way the dataset itself checks
them, but no image is opened. Spawrious-Lite is generated, once, right before launching
(`prepare_data`), rather than by several jobs at once on first use.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from domainbed import command_launchers, datasets, networks
from domainbed.lib.misc import UserInputError
from ex2l_domainbed.datasets import spawrious_lite
from ex2l_domainbed.datasets.spawrious import TREE_FOLDER, SpawriousBenchmark
from ex2l_domainbed.reproduce.definition import Definition
from ex2l_domainbed.reproduce.estimate import backbone_of
from ex2l_domainbed.reproduce.jobs import job_hparams


def check_launcher_name(name: str) -> None:
    if name not in command_launchers.REGISTRY:
        raise UserInputError(f"unknown --command_launcher '{name}'. Known: "
                             f"{', '.join(command_launchers.REGISTRY)}.")


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_launcher_runs(name: str) -> None:
    """The launcher's own preflight (GPUs, sbatch, ...) and, for slurm, submitit."""
    if name == "slurm" and not installed("submitit"):
        raise UserInputError("the slurm launcher needs submitit, which is not installed: "
                             "pip install submitit.")
    preflight = getattr(command_launchers.REGISTRY[name], "preflight", None)
    if preflight is not None:
        preflight()


def _lite_tree(data_dir: str) -> str:
    """Where the Lite datasets look for their tree (as their `prepare_root`)."""
    root = os.path.normpath(os.path.expanduser(data_dir))
    if os.path.basename(root) == TREE_FOLDER and os.path.isdir(root):
        return root
    return os.path.join(root, TREE_FOLDER)


def check_lite(data_dir: str) -> None:
    """Spawrious-Lite is generated into --data_dir: it must be a folder, and data already
    there must be Lite's."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserInputError(f"--data_dir {data_dir} is a file; give a folder for the data.")
    tree = _lite_tree(data_dir)
    if os.path.isdir(tree) and spawrious_lite.read_marker(tree) is None:
        raise UserInputError(
            f"{tree} is not Spawrious-Lite data (no {spawrious_lite.MARKER}); it may be real "
            f"Spawrious. Give the Lite datasets their own --data_dir.")


def check_spawrious(dataset_cls: type, data_dir: str) -> None:
    """Every folder the challenge reads exists and holds enough images (none is opened):
    the dataset's own checks, without building it."""
    probe = dataset_cls.__new__(dataset_cls)
    probe.base_count, probe.image_size = dataset_cls.BASE_COUNT, dataset_cls.IMAGE_SIZE
    probe.root = probe.prepare_root(data_dir)
    probe.collect_samples(probe.environment_cells())


def check_data(definition: Definition, data_dir: str) -> None:
    for name in definition.datasets:
        cls = datasets.get_dataset_class(name)
        if issubclass(cls, spawrious_lite.SpawriousLiteBenchmark):
            check_lite(data_dir)
        elif issubclass(cls, SpawriousBenchmark):
            check_spawrious(cls, data_dir)
        elif getattr(cls, "NEEDS_DATA_DIR", True) and not os.path.isdir(data_dir):
            raise UserInputError(f"--data_dir {data_dir} does not exist; {name} reads its data "
                                 "from there.")


def check_weights(definition: Definition, all_train_args: list[dict]) -> None:
    """Pretrained weights each job loads: a `pretrained_path` file, or for a ResNet the
    torch cache's ImageNet file (networks never downloads it)."""
    checked = set()
    for args in all_train_args:
        hp = job_hparams(args)
        if not hp.get("pretrained", False):
            continue
        path = hp.get("pretrained_path") or ""
        arch = backbone_of(hp, datasets.get_dataset_class(args["dataset"])).split("@")[0]
        if not path and arch in ("resnet18", "resnet50"):
            path = networks.pretrained_cache_path(arch)
            fix = (f"copy torchvision's {arch} ImageNet file there (or set TORCH_HOME), or set "
                   f"pretrained_path in [hparams] of {definition.path}")
        else:
            fix = f"fix pretrained_path in [hparams] of {definition.path}"
        if path and path not in checked and not os.path.isfile(path):
            raise UserInputError(f"{args['algorithm']} on {args['dataset']} loads pretrained "
                                 f"weights from {path}, which does not exist (nothing is "
                                 f"downloaded): {fix}.")
        checked.add(path)


def prepare_data(definition: Definition, data_dir: str) -> None:
    """Generate Spawrious-Lite once, before the jobs start, where a Lite dataset needs it."""
    lite = [n for n in definition.datasets
            if issubclass(datasets.get_dataset_class(n), spawrious_lite.SpawriousLiteBenchmark)]
    if lite and not os.path.isdir(_lite_tree(data_dir)):
        print(f"Generating Spawrious-Lite into {data_dir} (once, before the jobs start)...",
              file=sys.stderr)
        spawrious_lite.generate(data_dir)
