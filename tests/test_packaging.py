"""Meta-tests of the distribution: one import namespace of our own, installable beside PyPI's
``adapters`` (AdapterHub) without either distribution writing into the other's files."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pip(python: Path | str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def our_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT))
    if built.returncode:
        built = _pip(sys.executable, "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT))
    assert built.returncode == 0, built.stderr[-2000:]
    return next(out.glob("ce_conformance-*.whl"))


def test_wheel_claims_only_its_own_namespace(our_wheel):
    names = zipfile.ZipFile(our_wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"ce_conformance"}, top_level
    assert "ce_conformance/adapters/base.py" in names
    assert "ce_conformance/baselines/torch-2.13-cpu.toml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(our_wheel).read(entry_points).decode()
    assert "ce-conformance = ce_conformance.cli:main" in text
    assert "ce_conformance = ce_conformance.pytest_plugin" in text  # plugin name unchanged


@pytest.fixture(scope="module")
def pypi_adapters_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pypi")
    fetched = _pip(sys.executable, "download", "--no-deps", "-q", "-d", str(out), "adapters", timeout=300)
    if fetched.returncode:
        pytest.skip(f"PyPI's 'adapters' could not be downloaded here: {fetched.stderr.strip()[-300:]}")
    return next(out.glob("adapters-*.whl"))


def test_installs_beside_pypi_adapters_and_both_import(tmp_path, our_wheel, pypi_adapters_wheel):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = _pip(sys.executable, "--python", str(python), "install", "--no-deps", "-q",
                     str(pypi_adapters_wheel), str(our_wheel))
    if installed.returncode and "no such option: --python" in installed.stderr:
        pytest.skip("pip too old for --python")
    assert installed.returncode == 0, installed.stderr[-2000:]
    # Our dependencies come from this test environment's site-packages (PYTHONPATH does not run
    # the editable install's .pth finder, so ce_conformance can only come from the fresh venv).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    probe = r"""
import importlib.util, json, sys, sysconfig
from importlib import metadata
purelib = sysconfig.get_paths()["purelib"]
def dist(name):
    return next(metadata.distributions(name=name, path=[purelib]))
spec = {n: importlib.util.find_spec(n).origin for n in ("adapters", "ce_conformance", "ce_conformance.adapters")}
files = {d: {str(f).split("/")[0] for f in (dist(d).files or [])} for d in ("adapters", "ce-conformance")}
import ce_conformance, ce_conformance.adapters
from ce_conformance.adapters import load_adapter
print(json.dumps({"spec": spec, "files": {k: sorted(v) for k, v in files.items()},
                  "numpy_adapter": load_adapter("numpy").name, "prefix": sys.prefix}))
"""
    ran = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    facts = json.loads(ran.stdout.strip().splitlines()[-1])
    site_dir = str(Path(facts["prefix"]).resolve())
    assert facts["spec"]["adapters"].startswith(site_dir)  # PyPI's package, untouched
    assert facts["spec"]["ce_conformance.adapters"].startswith(site_dir)
    assert facts["spec"]["ce_conformance.adapters"] != facts["spec"]["adapters"]
    ours = {f for f in facts["files"]["ce-conformance"] if not f.endswith(".dist-info") and f != ".."}
    theirs = {f for f in facts["files"]["adapters"] if not f.endswith(".dist-info") and f != ".."}
    assert ours == {"ce_conformance"} and not ours & theirs, (ours, theirs)
    assert facts["numpy_adapter"] == "numpy"
    gate = subprocess.run([str(venv / "bin" / "ce-conformance"), "gate", "--impl", "torch.nn.functional:cross_entropy",
                           "--max-examples", "15", "--no-shrink", "--in-process", "--out", str(tmp_path / "gate")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert gate.returncode == 0, (gate.stdout[-2000:], gate.stderr[-2000:])
    assert "PASS" in gate.stdout
