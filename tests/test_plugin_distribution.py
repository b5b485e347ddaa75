"""The plugin-only distribution (packaging/plugin) in an environment with upstream DomainBed.

The full distribution installs this project's harness as `domainbed`; wherever an upstream
checkout is not first on sys.path (a script in a subfolder of the checkout) that harness is
what `import domainbed` finds. The plugin-only wheel has no `domainbed`, so it cannot shadow
upstream. Checked for real: the wheel is built from the repo, installed (unpacked) into a new
virtual environment that reaches torch through the test venv's site-packages but not this
project's editable install, and then the EX2L wrappers run inside the generated upstream
stand-in (tests/upstream_standin.py).
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from upstream_standin import write_standin

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "import domainbed, sys; print(domainbed.__file__)\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(REPO / "packaging" / "plugin")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("ex2l_domainbed_plugin-*.whl")
    return path


@pytest.fixture(scope="module")
def plugin_env(wheel, tmp_path_factory) -> Path:
    """A venv holding only the plugin wheel; torch & co. come from this venv's site-packages
    through a .pth line (which, unlike site-packages itself, loads no editable finder)."""
    root = tmp_path_factory.mktemp("plugin_env")
    venv.EnvBuilder(with_pip=False).create(root)
    purelib = Path(subprocess.run(
        [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(purelib)
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root


def _run(env_root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{env_root / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run([str(env_root / "bin" / "python"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_plugin_and_not_the_harness(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "domainbed" not in tops and "ex2l_domainbed" in tops
    assert "ex2l_domainbed/algorithm.py" in names and "ex2l_domainbed/upstream/sweep.py" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[domainbed.plugins]" in text and "ex2l_domainbed.plugin:register" in text


def test_full_distribution_shadows_upstream_from_a_subfolder(tmp_path):
    """The problem the plugin-only wheel solves, shown with this test's own interpreter."""
    root = write_standin(tmp_path / "DomainBed")
    (root / "tools").mkdir()
    (root / "tools" / "where.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "tools/where.py"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(REPO)  # this project's harness, not upstream's


def test_plugin_only_never_imports_this_harness(plugin_env, tmp_path):
    root = write_standin(tmp_path / "DomainBed")
    (root / "tools").mkdir()
    (root / "tools" / "where.py").write_text(SCRIPT)
    from_subfolder = _run(plugin_env, root, "tools/where.py")
    assert from_subfolder.returncode != 0 and "No module named 'domainbed'" in from_subfolder.stderr
    from_root = _run(plugin_env, root, "-c", SCRIPT)
    assert Path(from_root.stdout.strip()).is_relative_to(root), from_root.stderr

    sweep_dir = tmp_path / "sweep"
    proc = _run(plugin_env, root, "-m", "ex2l_domainbed.upstream.sweep", "launch",
                "--algorithms", "EX2L", "--datasets", "Debug28", "--data_dir", str(tmp_path),
                "--output_dir", str(sweep_dir), "--command_launcher", "local",
                "--n_hparams", "1", "--n_trials", "1", "--steps", "2", "--skip_confirmation")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = sweep_dir.iterdir()
    record = json.loads((run_dir / "results.jsonl").read_text().splitlines()[-1])
    assert record["args"]["algorithm"] == "EX2L" and "overlap" in record
    assert Path(record["domainbed_file"]).is_relative_to(root)
    assert record["foreign_modules"] == []
    plugin = _run(plugin_env, root, "-c", "import ex2l_domainbed; print(ex2l_domainbed.__file__)")
    assert not Path(plugin.stdout.strip()).is_relative_to(REPO)  # the installed wheel's copy


def test_plugin_sdist_builds_the_same_wheel(wheel, tmp_path):
    """The sdist carries what its setup.py reads (the shared metadata, through its link)."""
    plugin = REPO / "packaging" / "plugin"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=plugin,
                   capture_output=True, text=True, timeout=300, check=True)
    (sdist,) = tmp_path.glob("ex2l_domainbed_plugin-*.tar.gz")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "wheel"), str(sdist)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rebuilt,) = (tmp_path / "wheel").glob("*.whl")
    assert sorted(zipfile.ZipFile(rebuilt).namelist()) == sorted(zipfile.ZipFile(wheel).namelist())
