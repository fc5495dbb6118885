# advcam: how adversarial attacks move Grad-CAM explanations (Chakraborty et al., CVPRW 2022).
# Thin on purpose: config + schema, the stage rules, and the final targets. The science is in
# workflow/advcam; rules only call its CLI.
from snakemake.utils import min_version

min_version("8.0")


# The embedded default study, unless a study is given with --configfile: that file is then the whole study
# (schema defaults fill what it leaves out). Snakemake would otherwise deep-merge it over config.yaml, and
# the default's models, attacks and training keys would leak into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/summary.smk"


rule all:
    input:
        final_targets(),
    default_target: True
