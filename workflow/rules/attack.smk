# Attacks: FGSM's gradient sign once per model, then every (attack, ε) is a cheap step.


rule gradient:
    input:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        data=data_store,
    output:
        f"{RESULTS}/attacks/{{model}}/r{{rep}}/fgsm_sign.h5",
    log:
        f"{RESULTS}/logs/gradient/{{model}}/r{{rep}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gradient/{{model}}/r{{rep}}.tsv"
    priority: model_priority
    group:
        RUN_GROUP
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    resources:
        **GPU_JOB,
    params:
        batch=CAM_SETTINGS.batch_size,
        device=DEVICE,
    shell:
        "python -m advcam gradient --model {input.model} --data {input.data} --out {output} "
        "--batch-size {params.batch} --device {params.device} --threads {threads} > {log} 2>&1"


rule attack:
    # One forward pass (and one logit→layer backward) per batch gives the adversarial predictions and every
    # CAM method's heatmaps, a file per method.
    input:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        data=data_store,
        gradient=f"{RESULTS}/attacks/{{model}}/r{{rep}}/fgsm_sign.h5",
    output:
        attack=f"{RESULTS}/attacks/{{model}}/r{{rep}}/{{attack}}/{{eps}}.h5",
        heatmaps=adv_heatmap_files(),
    log:
        f"{RESULTS}/logs/attack/{{model}}/r{{rep}}/{{attack}}/{{eps}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attack/{{model}}/r{{rep}}/{{attack}}/{{eps}}.tsv"
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
        settings=attack_settings,
        sign=lambda w, input: f"--sign {input.gradient}" if w.attack == "fgsm" else "",
        transfer="",
    shell:
        "python -m advcam attack --model {input.model} --data {input.data} --attack {wildcards.attack} "
        "--eps {wildcards.eps} --settings {params.settings:q} {params.transfer} {params.sign} "
        "--clean-logits {input.gradient} --out {output.attack} --heatmaps {output.heatmaps} "
        "--name {wildcards.model} --target {params.target} {params.amp} {params.attribution} --batch-size {params.batch} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


use rule attack as transfer with:
    # Black-box transfer: the source model's adversarial test images, classified and explained by this model
    # in one forward pass per batch (the same CAM methods as its white-box heatmaps).
    input:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        data=data_store,
        gradient=f"{RESULTS}/attacks/{{model}}/r{{rep}}/fgsm_sign.h5",
        source=f"{RESULTS}/attacks/{{source}}/r{{rep}}/{{attack}}/{{eps}}.h5",
        source_sign=transfer_sign,
    output:
        attack=f"{RESULTS}/attacks/{{model}}/r{{rep}}/from_{{source}}/{{attack}}/{{eps}}.h5",
        heatmaps=transfer_heatmap_files(),
    log:
        f"{RESULTS}/logs/transfer/{{model}}/r{{rep}}/from_{{source}}/{{attack}}/{{eps}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/transfer/{{model}}/r{{rep}}/from_{{source}}/{{attack}}/{{eps}}.tsv"
    params:
        **CAM_PARAMS,  # `with: params` replaces the whole block
        settings=attack_settings,
        sign=lambda w, input: f"--sign {input.source_sign}" if input.source_sign else "",
        transfer=lambda w, input: f"--transfer-from {input.source}",
