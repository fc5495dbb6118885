# Summary tables, figures and the per-model galleries (local rules: cheap, CPU only).


localrules:
    summarise,
    plot,
    gallery,


rule summarise:
    input:
        scores=score_files() + transfer_score_files(),
        sanity=sanity_files(),
        reports=train_reports(),
        detection=detection_files(),
    output:
        mod_vid=f"{RESULTS}/summary/mod_vid.csv",
        vid=f"{RESULTS}/summary/vid.csv",
        vid_images=f"{RESULTS}/summary/vid_per_image.csv",
        nissim=f"{RESULTS}/summary/nissim.csv",
        replicates=f"{RESULTS}/summary/replicates.csv",
        claims=f"{RESULTS}/summary/claims.csv",
        sanity=[f"{RESULTS}/summary/sanity.csv"] if SANITY else [],
        detection=[f"{RESULTS}/summary/detection.csv"] if DETECTION else [],
    log:
        f"{RESULTS}/logs/summarise.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarise.tsv"
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    params:
        confidence=config["summary"]["confidence"],
        resamples=config["summary"]["resamples"],
        min_accuracy=config["min_accuracy"],
        # the threshold as a plain value (snakemake records it, so changing it reruns this job), the files derived
        sanity_threshold=f"--sanity-threshold {config['sanity']['threshold']}" if SANITY else "",
        sanity=lambda w, input, output: (
            f"--sanity {' '.join(input.sanity)} --sanity-out {output.sanity}" if input.sanity else ""
        ),
        # the detection tables and the FPR their TPR is read at (a plain value: changing it reruns this job)
        fpr=f"--fpr {DETECTION_SETTINGS.fpr}" if DETECTION else "",
        detection=lambda w, input, output: (
            f"--detection {' '.join(input.detection)} --detection-out {output.detection}" if input.detection else ""
        ),
    shell:
        "python -m advcam summarise {input.scores} --out {output.mod_vid} --vid {output.vid} --vid-images {output.vid_images} "
        "--nissim {output.nissim} --train-reports {input.reports} --min-accuracy {params.min_accuracy} "
        "--replicates {output.replicates} --claims {output.claims} --confidence {params.confidence} "
        "--resamples {params.resamples} {params.sanity} {params.sanity_threshold} {params.detection} "
        "{params.fpr} > {log} 2>&1"


rule plot:
    input:
        summary=f"{RESULTS}/summary/mod_vid.csv",
        replicates=f"{RESULTS}/summary/replicates.csv",
        claims=f"{RESULTS}/summary/claims.csv",
        vid_images=f"{RESULTS}/summary/vid_per_image.csv",
        nissim=f"{RESULTS}/summary/nissim.csv",
        sanity=[f"{RESULTS}/summary/sanity.csv"] if SANITY else [],
        detection=detection_files(),
    output:
        mod=report(f"{RESULTS}/plots/mod.png", caption="../report/mod.rst", category="Summary"),
        accuracy=report(f"{RESULTS}/plots/accuracy.png", caption="../report/accuracy.rst", category="Summary"),
        vid=report(f"{RESULTS}/plots/vid.png", caption="../report/vid.rst", category="Summary"),
        claims=report(f"{RESULTS}/plots/claims.png", caption="../report/claims.rst", category="Summary"),
        nissim=report(
            expand(f"{RESULTS}/plots/nissim_{{attack}}.png", attack=list(ATTACKS)),
            caption="../report/nissim.rst",
            category="Distributions",
        ),
        transfer=report(
            expand(f"{RESULTS}/plots/transfer_{{target}}.png", target=transfer_targets()),
            caption="../report/transfer.rst",
            category="Transfer",
        ),
        localisation=report(
            [f"{RESULTS}/plots/localisation.png"] if LOCALISE else [],
            caption="../report/localisation.rst",
            category="Localisation",
        ),
        sanity=report(
            [f"{RESULTS}/plots/sanity_{m}.png" for m in MODELS] if SANITY else [],
            caption="../report/sanity.rst",
            category="Sanity check",
        ),
        roc=report(
            [f"{RESULTS}/plots/roc_{m}.png" for m in MODELS] if DETECTION else [],
            caption="../report/roc.rst",
            category="Detection",
        ),
    log:
        f"{RESULTS}/logs/plot.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot.tsv"
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    params:
        outdir=lambda w, output: os.path.dirname(output.mod),
        sanity=lambda w, input: f"--sanity {input.sanity}" if input.sanity else "",
        detection=lambda w, input: f"--detection {' '.join(input.detection)}" if input.detection else "",
    shell:
        "python -m advcam plot --summary {input.summary} --replicates {input.replicates} --claims {input.claims} --vid-images {input.vid_images} --nissim {input.nissim} "
        "{params.sanity} {params.detection} --out-dir {params.outdir} > {log} 2>&1"


rule gallery:
    input:
        data=data_store,
        clean=lambda w: clean_heatmap_files(w.model, 0),
        adv=lambda w: gallery_heatmaps(w.model),
    output:
        report(f"{RESULTS}/plots/gallery_{{model}}.png", caption="../report/gallery.rst", category="Galleries"),
    log:
        f"{RESULTS}/logs/gallery/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gallery/{{model}}.tsv"
    priority: collect_priority
    conda:
        "../../envs/advcam.yaml"
    threads: 1
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        n=config["gallery_images"],
    shell:
        "python -m advcam gallery --data {input.data} --clean {input.clean} --adv {input.adv} --out {params.prefix} "
        "--n {params.n} --title '{wildcards.model}: clean and FGSM CAMs' > {log} 2>&1"
