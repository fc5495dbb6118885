# Summary tables, figures and the per-model galleries (local rules: cheap, CPU only).


localrules:
    summarise,
    plot,
    gallery,


rule summarise:
    input:
        score_files() + transfer_score_files(),
    output:
        mod_vid=f"{RESULTS}/summary/mod_vid.csv",
        vid=f"{RESULTS}/summary/vid.csv",
        vid_images=f"{RESULTS}/summary/vid_per_image.csv",
        nissim=f"{RESULTS}/summary/nissim.csv",
    params:
        confidence=config["summary"]["confidence"],
        resamples=config["summary"]["resamples"],
    log:
        f"{RESULTS}/logs/summarise.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarise.tsv"
    threads: 1
    conda:
        "../../envs/advcam.yaml"
    shell:
        "python -m advcam summarise {input} --out {output.mod_vid} --vid {output.vid} --vid-images {output.vid_images} "
        "--nissim {output.nissim} --confidence {params.confidence} --resamples {params.resamples} > {log} 2>&1"


rule plot:
    input:
        summary=f"{RESULTS}/summary/mod_vid.csv",
        vid_images=f"{RESULTS}/summary/vid_per_image.csv",
        nissim=f"{RESULTS}/summary/nissim.csv",
    output:
        mod=report(f"{RESULTS}/plots/mod.png", caption="../report/mod.rst", category="Summary"),
        accuracy=report(f"{RESULTS}/plots/accuracy.png", caption="../report/accuracy.rst", category="Summary"),
        vid=report(f"{RESULTS}/plots/vid.png", caption="../report/vid.rst", category="Summary"),
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
    params:
        outdir=lambda w, output: os.path.dirname(output.mod),
    log:
        f"{RESULTS}/logs/plot.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot.tsv"
    threads: 1
    conda:
        "../../envs/advcam.yaml"
    shell:
        "python -m advcam plot --summary {input.summary} --vid-images {input.vid_images} --nissim {input.nissim} "
        "--out-dir {params.outdir} > {log} 2>&1"


rule gallery:
    input:
        data=data_store,
        clean=clean_heatmap_files(),
        adv=lambda w: gallery_heatmaps(w.model),
    output:
        report(f"{RESULTS}/plots/gallery_{{model}}.png", caption="../report/gallery.rst", category="Galleries"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        n=config["gallery_images"],
    log:
        f"{RESULTS}/logs/gallery/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gallery/{{model}}.tsv"
    threads: 1
    conda:
        "../../envs/advcam.yaml"
    shell:
        "python -m advcam gallery --data {input.data} --clean {input.clean} --adv {input.adv} --out {params.prefix} "
        "--n {params.n} --title '{wildcards.model}: clean and FGSM CAMs' > {log} 2>&1"
