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
    input:
        clean=clean_heatmap_files(),
        adv=adv_heatmap_files(),
    output:
        f"{RESULTS}/scores/{{model}}/{{attack}}/{{eps}}.csv",
    params:
        ssim=config["ssim"],
        measures=" ".join(config["metrics"]["measures"]),
        k=config["metrics"]["k"],
    log:
        f"{RESULTS}/logs/score/{{model}}/{{attack}}/{{eps}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}/{{attack}}/{{eps}}.tsv"
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
        adv=transfer_heatmap_files(),
    output:
        f"{RESULTS}/scores/{{model}}/from_{{source}}/{{attack}}/{{eps}}.csv",
    log:
        f"{RESULTS}/logs/score/{{model}}/from_{{source}}/{{attack}}/{{eps}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}/from_{{source}}/{{attack}}/{{eps}}.tsv"
