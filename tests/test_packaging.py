"""The package works when installed, not only from the checkout.

The run configs are package data (``src/distillery/configs``; the repository's top-level
``configs/`` is a symbolic link to it). The slow test builds the wheel offline, installs it into a
fresh virtual environment that sees this environment's dependencies (torch, numpy, ...) but not
the editable checkout, and runs a bundled config by name from an unrelated directory.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import distillery
from distillery.config import bundled
from distillery.recipes import CONFIG_DIR
from distillery.registry import RECIPES

ROOT = Path(__file__).resolve().parents[1]


def test_configs_have_one_copy_inside_the_package():
    package = Path(distillery.__file__).resolve().parent
    assert CONFIG_DIR == package / "configs" and CONFIG_DIR.is_dir()
    # the repository's configs/ is the package folder itself (a symbolic link), not a second copy
    assert (ROOT / "configs").resolve() == CONFIG_DIR.resolve()
    # pyproject's package-data ships configs/*.yaml: nothing else may hide in the folder
    assert sorted(p.name for p in CONFIG_DIR.iterdir()) == sorted(f"{n}.yaml" for n in bundled.names())
    for name in RECIPES.names():
        assert RECIPES.get(name).config_path().is_file(), name


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _copy_source(dest: Path) -> Path:
    """The files a wheel is built from, copied so that the build leaves the checkout untouched."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


@pytest.mark.slow
def test_wheel_installs_and_runs_a_bundled_config_by_name(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", OMP_NUM_THREADS="1")

    # 1. the wheel, built offline from a copy of the source
    source = _copy_source(tmp_path / "source")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), str(source)], env=env)
    (wheel,) = wheels.glob("distillery-*.whl")

    # 2. a fresh environment whose .pth adds this one's site-packages as plain paths: the
    # dependencies are importable, the editable install's own .pth (the checkout's src/) is not read
    fresh = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], env=env)
    python = fresh / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        env=env).stdout.strip())
    (purelib / "_deps_of_the_test_env.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         env=env)

    probe = (
        "import json, sys, distillery\n"
        "from distillery.recipes import CONFIG_DIR\n"
        "from distillery.registry import RECIPES\n"
        "print(json.dumps({'file': distillery.__file__, 'configs': str(CONFIG_DIR), 'path': sys.path,\n"
        "  'missing': [n for n in RECIPES.names() if not RECIPES.get(n).config_path().is_file()]}))\n"
    )
    where = json.loads(_run([str(python), "-c", probe], env=env, cwd=tmp_path).stdout)
    assert Path(where["file"]).is_relative_to(purelib), where["file"]
    assert Path(where["configs"]).is_relative_to(purelib) and where["missing"] == []
    assert str(ROOT / "src") not in where["path"]

    # 3. the bundled config by name, from a directory that holds no configs/, shortened to a smoke run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _run([str(fresh / "bin" / "distillery"), "run", "kd_mnist1d", "--set", "train.epochs=1",
                 "--set", "teacher.fit.epochs=1", "--set", "student.params.hidden=[64]",
                 "--set", "train.tensorboard=false"], env=env, cwd=elsewhere)
    out = elsewhere / "runs" / "kd_mnist1d"
    assert "run finished: runs/kd_mnist1d" in proc.stdout
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "student.safetensors", "report.md",
                 "teacher/student.safetensors"):
        assert (out / name).is_file(), name
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["name"] == "kd_mnist1d" and resolved["train"]["epochs"] == 1
    assert resolved["data"]["dataset"] == "mnist1d"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["epochs"] == 1 and 0.0 <= summary["final"]["accuracy"] <= 1.0
