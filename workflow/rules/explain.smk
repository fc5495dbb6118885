# CAMs of the clean test set, a file per method (once per model; the adversarial ones come with rule attack),
# then NISSIM and the other measures per image and method, and the sanity check of the methods per model.


rule explain_clean:
    input:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        data=data_store,
    output:
        clean_heatmap_files(),
    log:
        f"{RESULTS}/logs/explain/{{model}}/r{{rep}}/clean.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain/{{model}}/r{{rep}}/clean.tsv"
    priority: model_priority
    group:
        RUN_GROUP
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    resources:
        **GPU_JOB,
    params:
        **CAM_PARAMS,
    shell:
        "python -m advcam explain --model {input.model} --data {input.data} --out {output} --name {wildcards.model} "
        "--target {params.target} --batch-size {params.batch} {params.amp} {params.attribution} --device {params.device} "
        "--threads {threads} "
        "> {log} 2>&1"


rule score:
    # one job per model scores every attack and ε (paired by what each heatmap file records): 6 jobs in the
    # default instead of 33, each of which paid ~2.5 s of imports for ~2.5 s of work. Changing an ε rescores
    # that model (seconds); changing a measure reruns only these jobs and the summaries. The white-box table
    # also holds the chance reference (attack chance); the store gives the part masks for localisation.
    input:
        clean=clean_heatmap_files(),
        adv=lambda w: model_adv_heatmaps(w.model, w.rep),
        data=data_store,
    output:
        f"{RESULTS}/scores/{{model}}/r{{rep}}/white_box.csv",
    log:
        f"{RESULTS}/logs/score/{{model}}/r{{rep}}/white_box.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}/r{{rep}}/white_box.tsv"
    priority: collect_priority
    group:
        RUN_GROUP
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    resources:
        runtime=30,
        mem_mb=4000,
    params:
        settings=SCORE_SETTINGS.to_json(),
    shell:
        "python -m advcam score --clean {input.clean} --adv {input.adv} --data {input.data} --out {output} "
        "--settings {params.settings:q} --device cpu "
        "--threads {threads} > {log} 2>&1"


use rule score as score_transfer with:
    input:
        clean=clean_heatmap_files(),
        adv=lambda w: pair_transfer_heatmaps(w.model, w.source, w.rep),
        data=data_store,
    output:
        f"{RESULTS}/scores/{{model}}/r{{rep}}/from_{{source}}.csv",
    log:
        f"{RESULTS}/logs/score/{{model}}/r{{rep}}/from_{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}/r{{rep}}/from_{{source}}.tsv"
    params:
        settings=TRANSFER_SCORE_SETTINGS.to_json(),  # no chance rows: they are in the target's white-box table


rule sanity:
    # cascading model-parameter randomisation on a few test images, a table per (model, CAM method) written by one
    # job per model, as explain_clean does: the gradient methods share each step's forward and backward, and a job
    # per method would pay ~5 s of imports and model loading for ~2 s of work. The method is read from each
    # file's name: removing one reruns nothing, adding one reruns the model's check.
    input:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        data=data_store,
    output:
        sanity_model_files(),
    log:
        f"{RESULTS}/logs/sanity/{{model}}/r{{rep}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sanity/{{model}}/r{{rep}}.tsv"
    priority: model_priority
    group:
        RUN_GROUP
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    resources:
        **GPU_JOB,
    params:
        images=config["sanity"]["images"],
        seed=config["sanity"]["seed"],
        target=CAM_SETTINGS.target,
        batch=CAM_SETTINGS.batch_size,
        attribution=ATTRIBUTION_ARG,
        device=DEVICE,
    shell:
        "python -m advcam sanity --model {input.model} --data {input.data} --out {output} --name {wildcards.model} "
        "--images {params.images} --seed {params.seed} --target {params.target} {params.attribution} "
        "--batch-size {params.batch} --device {params.device} --threads {threads} > {log} 2>&1"
