# Training: one model per config key; adding a model trains only that model.


rule train:
    input:
        data_store,
    output:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        report=f"{RESULTS}/models/{{model}}/r{{rep}}/train.json",
    log:
        f"{RESULTS}/logs/train/{{model}}/r{{rep}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/r{{rep}}.tsv"
    priority: train_priority
    retries: RETRIES
    conda:
        "../../envs/advcam.yaml"
    threads: config["threads"]
    resources:
        gpu=GPU,
        runtime=scaled(240),
        mem_mb=scaled(24000),
    params:
        arch=lambda w: arch(w.model),
        settings=train_settings,
        hash=lambda w: model_hash(w.model),
        device=DEVICE,
    shell:
        "python -m advcam train --data {input} --arch {params.arch} --out {output.model} --report {output.report} "
        "--settings {params.settings:q} --replicate {wildcards.rep} --name {wildcards.model} --device {params.device} --threads {threads} --meta config_hash={params.hash} --no-progress > {log} 2>&1"
