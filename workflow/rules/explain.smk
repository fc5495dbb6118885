# CAMs of the clean test set, a file per method (once per model; the adversarial ones come with rule attack),
# then NISSIM and the other measures per image and method.


rule explain_clean:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        data=data_store,
    output:
        clean_heatmap_files(),
    params:
        target=config["cam"]["target"],
        batch=config["cam"]["batch_size"],
        amp="--amp" if config["cam"]["amp"] else "",
        device=DEVICE,
    log:
        f"{RESULTS}/logs/explain/{{model}}/clean.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain/{{model}}/clean.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=60,
        mem_mb=8000,
    conda:
        "../../envs/advcam.yaml"
    shell:
        "python -m advcam explain --model {input.model} --data {input.data} --out {output} --name {wildcards.model} "
        "--target {params.target} --batch-size {params.batch} {params.amp} --device {params.device} --threads {threads} "
        "> {log} 2>&1"


rule score:
    # one job per model scores every attack and ε (paired by what each heatmap file records): 6 jobs in the
    # default instead of 33, each of which paid ~2.5 s of imports for ~2.5 s of work. Changing an ε rescores
    # that model (seconds); changing a measure reruns only these jobs and the summaries.
    input:
        clean=clean_heatmap_files(),
        adv=lambda w: model_adv_heatmaps(w.model),
    output:
        f"{RESULTS}/scores/{{model}}/white_box.csv",
    params:
        ssim=config["ssim"],
        measures=" ".join(config["metrics"]["measures"]),
        k=config["metrics"]["k"],
    log:
        f"{RESULTS}/logs/score/{{model}}/white_box.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}/white_box.tsv"
    threads: 1
    resources:
        runtime=30,
        mem_mb=4000,
    conda:
        "../../envs/advcam.yaml"
    shell:
        "python -m advcam score --clean {input.clean} --adv {input.adv} --out {output} --ssim {params.ssim} "
        "--measures {params.measures} --k {params.k} --device cpu --threads {threads} > {log} 2>&1"


use rule score as score_transfer with:
    input:
        clean=clean_heatmap_files(),
        adv=lambda w: pair_transfer_heatmaps(w.model, w.source),
    output:
        f"{RESULTS}/scores/{{model}}/from_{{source}}.csv",
    log:
        f"{RESULTS}/logs/score/{{model}}/from_{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}/from_{{source}}.tsv"
