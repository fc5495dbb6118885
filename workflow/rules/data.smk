# Data: synthetic identities (the offline default) or an external image tree → one HDF5 store per size.


rule synth:
    output:
        directory(synthetic_dir()),
    log:
        f"{RESULTS}/logs/synth.log",
    benchmark:
        f"{RESULTS}/benchmarks/synth.tsv"
    conda:
        "../../envs/advcam.yaml"
    threads: 2
    resources:
        runtime=30,
        mem_mb=2000,
    params:
        identities=DATASET["identities"],
        images=DATASET["images_per_identity"],
        size=DATASET["synthetic_size"],
        seed=DATASET["seed"],
        pose=DATASET["pose_jitter"],
    shell:
        "python -m advcam synth --out {output} --identities {params.identities} --images {params.images} "
        "--size {params.size} --seed {params.seed} --pose {params.pose} --workers {threads} --masks > {log} 2>&1"


rule prepare:
    input:
        dataset_root,
    output:
        store=f"{RESULTS}/data/{{size}}.h5",
        report=f"{RESULTS}/data/{{size}}.json",
    log:
        f"{RESULTS}/logs/prepare/{{size}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare/{{size}}.tsv"
    priority: prepare_priority
    retries: RETRIES
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    resources:
        runtime=scaled(120),
        mem_mb=scaled(16000),
    params:
        root=synthetic_dir() if DATASET["source"] == "synthetic" else DATASET["root"],
        identities="" if DATASET["identities"] is None else f"--identities {DATASET['identities']}",
        min_images=DATASET["min_images"],
        split=" ".join(str(f) for f in DATASET["split"]),
        seed=DATASET["seed"],
        margin=DATASET["margin"],
        skip="--skip-broken" if DATASET["skip_broken"] else "",
        masks="--masks" if LOCALISE else "",
    shell:
        "python -m advcam prepare --root {params.root} --out {output.store} --size {wildcards.size} {params.identities} "
        "--min-images {params.min_images} --split {params.split} --seed {params.seed} --margin {params.margin} "
        "{params.skip} {params.masks} --report {output.report} --no-progress > {log} 2>&1"
