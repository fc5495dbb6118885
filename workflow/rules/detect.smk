# Detection from the input alone: the detector scores of every clean test image and of its adversarial versions
# under each white-box attack and ε, one job per training run (the summaries judge each score by its ROC-AUC).


rule detect:
    # one job per run, as score: each image's scores cost a CAM pass or two and two forwards, less than a job's
    # start-up. Changing `detection:` reruns these jobs and the summaries; adding an ε reruns them too (new input).
    input:
        model=f"{RESULTS}/models/{{model}}/r{{rep}}/model.pt",
        data=data_store,
        gradient=f"{RESULTS}/attacks/{{model}}/r{{rep}}/fgsm_sign.h5",
        attacks=lambda w: model_attack_files(w.model, w.rep),
    output:
        f"{RESULTS}/detection/{{model}}/r{{rep}}/scores.csv",
    log:
        f"{RESULTS}/logs/detect/{{model}}/r{{rep}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/detect/{{model}}/r{{rep}}.tsv"
    priority: model_priority
    group:
        RUN_GROUP
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    resources:
        **GPU_JOB,
    params:
        settings=lambda w: DETECTION_SETTINGS.to_json(),
        ssim=config["ssim"],
        batch=CAM_SETTINGS.batch_size,
        device=DEVICE,
    shell:
        "python -m advcam detect --model {input.model} --data {input.data} --attacks {input.attacks} "
        "--sign {input.gradient} --out {output} --settings {params.settings:q} --ssim {params.ssim} "
        "--name {wildcards.model} --batch-size {params.batch} --device {params.device} --threads {threads} > {log} 2>&1"
