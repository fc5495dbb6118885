"""File formats, each in its own module: the HDF5 store and provenance (:mod:`.store`), checkpoints, heatmap files
and attack files. They sit between the stages above and the algorithms below: a format module reads and writes one
kind of file and never runs a stage."""
