# nucleistyle: multi-modality microscopy style transfer for nuclei segmentation.
# Entry point: configuration, report description, one rule file per stage, and the target rule.
# Run the offline demo with `make run`; the real experiment with `snakemake --cores all`.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    testset=regex_of(TEST_SETS),
    bbbc_set="|".join(BBBC038_SETS),
    bbbc_file="|".join(f.replace(".", r"\.") for f in BBBC038_FILES),
    model="[a-z0-9_-]+",
    baseline="deep_retina|mirzaev",
    arm="none|style|jitter|oversample",


include: "workflow/rules/acquire.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/gan.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/classical.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
