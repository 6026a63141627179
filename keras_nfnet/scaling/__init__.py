"""The scaling-law study: sweeps of (model, epoch budget, learning rate), their results table, fits and plots.

Submodules: `results` (the tidy results store), `fit` (power-law fits with bootstrap intervals, the
compute-optimal frontier), `lr_search` (grid and smart learning-rate search), `plots`, `report` (the analysis
step), `sweep` (planning and launching runs through the pretraining trainer). Only numpy/scipy/matplotlib are
needed for the analysis; TensorFlow is imported only to write TensorBoard images and to run the trainer.
"""
