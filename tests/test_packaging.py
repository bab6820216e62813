"""`pip install .` into a fresh virtual environment gives a working, correctly described package.

The fresh venv has no pip and no packages of its own; a `.pth` file appends the test
venv's site-packages after the fresh one, so the already-installed dependencies are
found without network while the freshly installed `phd_jax` and its metadata come first.
Everything is imported from a directory outside the checkout.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", "*.pyc"
)


def _pins(filename):
    """{canonical name: Requirement} of a pinned requirements file (skips -r lines and comments)."""
    out = {}
    for line in open(os.path.join(REPO, filename)):
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def _pinned_version(req):
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return spec.version


def _venv(path):
    """A venv with no packages of its own; the test venv's site-packages come after its own."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = subprocess.run(
        [str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "_test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return purelib


def _pip_install(venv, *args, cwd, env):
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            *args,
        ],
        check=True,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    root = tmp_path_factory.mktemp("packaging")
    src, venv, outside = root / "src", root / "venv", root / "elsewhere"
    shutil.copytree(REPO, src, ignore=_IGNORE)  # build from a copy: no build/ in the checkout
    outside.mkdir()
    purelib = _venv(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _pip_install(venv, "--ignore-installed", str(src), cwd=outside, env=env)
    return dict(root=root, src=src, venv=venv, purelib=purelib, outside=outside, env=env)


def _run(fresh, *cmd):
    return subprocess.run(
        list(cmd), cwd=fresh["outside"], env=fresh["env"], capture_output=True, text=True, timeout=120
    )


def test_installed_package_imports_outside_the_checkout(fresh):
    code = """if 1:
        import importlib.metadata as md, json, os, phd_jax, phd_jax.cli
        dist = md.distribution("phd-jax")
        print(json.dumps(dict(file=phd_jax.__file__, version=phd_jax.__version__, dist_version=dist.version,
                              requires=dist.requires, urls=dist.metadata.get_all("Project-URL"),
                              license=dist.metadata.get("License-Expression"),
                              license_files=dist.metadata.get_all("License-File"),
                              files=sorted(str(f) for f in dist.files if str(f).endswith(".py")),
                              scripts=sorted(e.name for e in dist.entry_points if e.group == "console_scripts"))))
    """
    r = _run(fresh, str(fresh["venv"] / "bin" / "python"), "-c", code)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["file"].startswith(fresh["purelib"]), info["file"]  # not the checkout
    init = open(os.path.join(REPO, "phd_jax", "__init__.py")).read()
    version = re.search(r'^__version__ = "([^"]+)"', init, re.M).group(1)
    assert info["version"] == info["dist_version"] == version
    assert info["scripts"] == ["phd-eval", "phd-train"]
    assert info["urls"] == ["Paper, https://arxiv.org/abs/2504.14992"]  # no placeholder repository URL
    assert info["license"] == "Apache-2.0" and info["license_files"] == ["LICENSE"]
    # Every module of the source tree (all subpackages) is in the wheel, and nothing else top-level.
    source = sorted(
        os.path.relpath(os.path.join(d, f), REPO)
        for d, _, fs in os.walk(os.path.join(REPO, "phd_jax"))
        for f in fs
        if f.endswith(".py")
    )
    assert [f for f in info["files"] if not f.startswith("../")] == source


def test_declared_dependencies_match_the_pins(fresh):
    """Every requirements*.txt pin is declared in pyproject.toml (runtime or extra) and lies in its range."""
    r = _run(
        fresh,
        str(fresh["venv"] / "bin" / "python"),
        "-c",
        "import importlib.metadata as md, json; print(json.dumps(md.requires('phd-jax')))",
    )
    assert r.returncode == 0, r.stderr
    declared = [Requirement(s) for s in json.loads(r.stdout)]
    runtime = {canonicalize_name(q.name): q for q in declared if q.marker is None}
    extras = {}
    for q in declared:
        if q.marker is not None:
            extra = re.search(r'extra == "(\w+)"', str(q.marker)).group(1)
            extras.setdefault(extra, {})[canonicalize_name(q.name)] = q
    pins, dev_pins = _pins("requirements.txt"), _pins("requirements-dev.txt")
    for extra in ("eval", "hf", "gcs", "test", "cuda", "tpu"):
        assert extra in extras, f"extra [{extra}] missing"
    # requirements.txt = the runtime dependencies plus what the optional features need (lm-eval).
    assert set(runtime) <= set(pins), set(runtime) - set(pins)
    assert set(pins) - set(runtime) <= set(extras["eval"]) | set(extras["hf"]), set(pins) - set(runtime)
    for name, pin in {**pins, **dev_pins}.items():
        ranges = [q for q in [runtime.get(name), *(e.get(name) for e in extras.values())] if q is not None]
        assert ranges, f"{name} is pinned but not declared in pyproject.toml"
        for q in ranges:
            assert q.specifier.contains(_pinned_version(pin), prereleases=True), f"{pin} not in {q}"
    assert extras["cuda"]["jax"].extras == {"cuda12"} and extras["tpu"]["jax"].extras == {"tpu"}


def test_console_scripts_run(fresh):
    for script, flag in (("phd-train", "--config"), ("phd-eval", "--step")):
        r = _run(fresh, str(fresh["venv"] / "bin" / script), "--help")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"USAGE: {script}" in r.stdout and "--workdir" in r.stdout and flag in r.stdout, r.stdout
    # A config file that does not exist: a clear error, no traceback.
    r = _run(fresh, str(fresh["venv"] / "bin" / "phd-train"), "--config=nowhere/missing.py")
    assert r.returncode == 2
    assert "--config='nowhere/missing.py' is invalid" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_installed_phd_train_finds_its_configs_outside_the_checkout(fresh):
    """The default config and the README's `--config=configs/NAME.py` spelling are the wheel's own
    files (phd_jax/configs), wherever the user stands: the config loads and the overrides apply
    to it (an unknown key is reported against it; nothing trains, nothing is written)."""
    script = str(fresh["venv"] / "bin" / "phd-train")
    r = _run(fresh, script, "--help")
    assert r.returncode == 0 and "(default: 'configs/default.py')" in r.stdout, r.stdout + r.stderr
    for config in ([], ["--config=configs/tiny.py"], ["--config=configs/default.py:PHD-SWA-3-16-inf"]):
        r = _run(fresh, script, *config, "--config.model.nope=1")
        assert r.returncode == 2 and "error: --config.model.nope: 'nope' is not a config key" in r.stderr, (
            config,
            r.stdout + r.stderr,
        )
        assert "Traceback" not in r.stderr
    r = _run(fresh, script, "--config=configs/tiny.py:PHD-9x")  # the file's get_config ran, outside the checkout
    assert r.returncode == 2 and "config argument 'PHD-9x' is invalid" in r.stderr, r.stdout + r.stderr
    assert not (fresh["outside"] / "runs").exists()


def test_no_placeholder_repository_url():
    """The project has no public repository yet: nothing may advertise a made-up one. The README
    and the notebook explain Colab and installing without a URL; pyproject lists only real URLs."""
    import tomllib

    project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]
    urls = project.get("urls", {})
    assert urls.get("Paper") == "https://arxiv.org/abs/2504.14992"
    placeholder = re.compile(r"github\.com/phd-jax/phd-jax|github\.com/<|example\.(com|org)", re.I)
    assert not [u for u in urls.values() if placeholder.search(u)], urls
    assert project["license"] == "Apache-2.0" and os.path.exists(os.path.join(REPO, "LICENSE"))
    for name in ("README.md", os.path.join("notebooks", "quickstart.ipynb")):
        text = open(os.path.join(REPO, name)).read()
        assert "github.com/phd-jax/phd-jax" not in text, f"{name} advertises the placeholder repository"
        assert "colab.research.google.com/github/<you>/<repo>" in text, f"{name} lost its Colab instructions"


def test_editable_install_serves_scripts_and_benchmarks(fresh):
    """What scripts/venv.sh does (`pip install -e .`): scripts run from anywhere, no sys.path edits."""
    for d in ("scripts", "benchmarks"):
        for f in os.listdir(os.path.join(REPO, d)):
            if f.endswith(".py"):
                text = open(os.path.join(REPO, d, f)).read()
                assert not re.search(r"sys\.path\s*(\.|\+?=|\[)", text), f"{d}/{f} edits sys.path"
    assert (
        "pip install -q --disable-pip-version-check --no-deps -e ."
        in open(os.path.join(REPO, "scripts", "venv.sh")).read()
    )
    venv = fresh["root"] / "editable"
    _venv(venv)
    _pip_install(venv, "-e", str(fresh["src"]), cwd=fresh["outside"], env=fresh["env"])
    python = str(venv / "bin" / "python")
    r = _run(fresh, python, "-c", "import phd_jax; print(phd_jax.__file__)")
    assert r.returncode == 0 and r.stdout.strip() == str(fresh["src"] / "phd_jax" / "__init__.py"), r
    r = _run(fresh, python, str(fresh["src"] / "scripts" / "plot_masks.py"), "--models", "PHD-2", "--out", "m.png")
    assert r.returncode == 0 and os.path.getsize(fresh["outside"] / "m.png") > 0, r.stderr
    r = _run(fresh, python, str(fresh["src"] / "benchmarks" / "attention.py"), "--help")
    assert r.returncode == 0 and "usage: attention.py" in r.stdout, r.stderr
