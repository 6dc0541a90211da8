"""The config schema is the one place for keys, ranges and defaults; the settings classes agree."""

from __future__ import annotations

import dataclasses
import math

import pytest

from nucleistyle.classical import ClassicalConfig
from nucleistyle.cluster import ClusterConfig
from nucleistyle.data.synthetic import SyntheticConfig
from nucleistyle.enhance import ClaheConfig
from nucleistyle.errors import NucleistyleError
from nucleistyle.gan.augment import AugmentConfig
from nucleistyle.gan.configs import GanConfig
from nucleistyle.schema import check, load_schema, plain
from nucleistyle.tta import TTAConfig

# settings class, config section, fields set from elsewhere than the section
SECTIONS = [
    (GanConfig, ("gan",), {"n_domains", "seed"}),
    (ClusterConfig, ("cluster",), {"seed"}),
    (ClaheConfig, ("clahe",), set()),
    (ClassicalConfig, ("classical",), set()),
    (SyntheticConfig, ("data", "synthetic"), set()),
    (AugmentConfig, ("augment",), set()),
]


def _node(path: tuple[str, ...]) -> dict:
    node = load_schema()
    for part in path:
        node = node["properties"][part]
    return node


@pytest.mark.parametrize(
    ("cls", "path", "elsewhere"), SECTIONS, ids=lambda x: getattr(x, "__name__", "")
)
def test_each_section_lists_exactly_its_settings_fields_with_the_same_defaults(
    cls, path, elsewhere
):
    properties = _node(path)["properties"]
    fields = {f.name for f in dataclasses.fields(cls)} - elsewhere
    assert set(properties) == fields
    defaults = plain(cls())
    for name in fields:
        if "default" in properties[name]:
            assert properties[name]["default"] == defaults[name], ".".join((*path, name))


def test_tta_keys_are_the_settings_fields_and_each_baseline_may_override_them():
    properties = _node(("tta",))["properties"]
    fields = {f.name for f in dataclasses.fields(TTAConfig)}
    assert set(properties) == fields | {"deep_retina", "mirzaev"}
    assert set(properties["deep_retina"]["properties"]) == fields - {"batch_size"}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GanConfig(crop=218), r"config key gan\.crop: 218 is not a multiple of 4"),
        (lambda: GanConfig(batch_size=3), r"config key gan\.batch_size"),
        (lambda: GanConfig(w_kl=math.nan), r"config key gan\.w_kl: must be a finite number"),
        (lambda: GanConfig(crop=64, resize=32), r"gan\.resize \(32\) must be 0 or >= gan\.crop"),
        (lambda: GanConfig(iterations=10, warmup=10), r"gan\.warmup \(10\) must be below"),
        (lambda: GanConfig(upsample="bilinear"), r"config key gan\.upsample: 'bilinear' is not"),
        (lambda: AugmentConfig(tries=0), r"config key augment\.tries"),
        (lambda: ClusterConfig(k=1), r"config key cluster\.k: 1 is less than the minimum of 2"),
        (lambda: ClaheConfig(select="clusters"), r"config key clahe\.clusters"),
        (lambda: TTAConfig(merge="max"), r"config key tta\.merge: 'max' is not one of"),
    ],
)
def test_the_library_reports_a_bad_value_as_the_workflow_does(build, message):
    with pytest.raises(NucleistyleError, match=message):
        build()


def test_a_setting_that_no_section_describes_is_not_checked_against_one():
    check({"k": 3, "seed": -5}, "#/properties/cluster", "cluster", skip=("seed",))
    with pytest.raises(NucleistyleError, match=r"config key cluster: .*'seed' was unexpected"):
        check({"k": 3, "seed": -5}, "#/properties/cluster", "cluster")
