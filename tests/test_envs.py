"""Static checks of the per-rule conda environments (conda channels are unreachable here, so the
environments are checked, not built): every module a rule's script imports — directly or through the
nucleistyle library — is provided by that rule's environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nucleistyle.workflow import script_imports
from tests.conftest import REPO

SRC = REPO / "src"
# import name -> conda-forge package name, where they differ
CONDA_NAME = {
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "torch": "pytorch",
    "matplotlib": "matplotlib-base",
}
RULE = re.compile(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", re.MULTILINE)
DIRECTIVE = r"^    {name}:\n\s+\"([^\"]+)\""


def _rules() -> list[tuple[str, Path, Path, Path]]:
    found = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name, body in RULE.findall(smk.read_text()):
            conda = re.search(DIRECTIVE.format(name="conda"), body, re.MULTILINE)
            script = re.search(DIRECTIVE.format(name="script"), body, re.MULTILINE)
            assert conda, f"rule {name} in {smk.name} has no conda: directive"
            if script:
                found.append(
                    (
                        name,
                        smk,
                        (smk.parent / conda[1]).resolve(),
                        (smk.parent / script[1]).resolve(),
                    )
                )
    return found


def _env_packages(env: Path) -> set[str]:
    spec = yaml.safe_load(env.read_text())
    names = set()
    for dep in spec["dependencies"]:
        if isinstance(dep, str):
            names.add(re.split(r"[ =<>]", dep, maxsplit=1)[0])
    return names


RULES = _rules()


def test_every_rule_with_a_script_was_found():
    assert {"segment_classical", "score_submission", "cluster_images"} <= {r[0] for r in RULES}


@pytest.mark.parametrize(("rule", "smk", "env", "script"), RULES, ids=[r[0] for r in RULES])
def test_rule_environment_provides_every_imported_module(rule, smk, env, script):
    assert env.is_file(), f"{smk.name}: rule {rule} names a missing environment {env}"
    provided = _env_packages(env)
    missing = {m for m in script_imports(script, SRC)[1] if CONDA_NAME.get(m, m) not in provided}
    missing.discard("snakemake")  # the script preamble comes from the controller's Snakemake
    assert not missing, f"rule {rule}: {env.name} lacks {sorted(missing)}"


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_environments_are_pinned_conda_forge_only(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    for dep in spec["dependencies"]:
        assert re.match(r"^[\w.-]+ =\S+", dep), f"{env.name}: {dep!r} is not pinned"


def test_gpu_environment_requires_a_cuda_build_of_pytorch():
    deps = yaml.safe_load((REPO / "envs" / "torch.yaml").read_text())["dependencies"]
    assert any(re.match(r"^pytorch =\S+ =cuda\*$", d) for d in deps)
    assert any(d.startswith("cuda-version =") for d in deps)
