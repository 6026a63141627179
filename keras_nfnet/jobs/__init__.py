"""The jobs: pretrain, finetune, evaluate and sweep, each a module with its library function and its command
line (`python -m keras_nfnet.jobs.<name>`, or the console script `nfnet-<name>`).

What they share lives in `context` (work directory and saved config, strategy, seeding, compiling with the Keras
workarounds, TensorBoard, divergence stop, the one result file), `config` (config files and their overrides, with
ml_collections), `defaults` (every job's fields) and `app` (flags and exit codes).
"""
