"""The config files shipped with the package; a job takes one by its short name (`--config=cpu_tiny`) or any
config file by its path. Each defines `get_config(arg=None)` returning the job's ConfigDict
(`keras_nfnet.jobs.defaults`); the text after `:` in `--config=name:arg` is `arg`.

    pretraining   cpu_tiny, cpu_mirrored, jft_pretrain (arg: the variant), sweep_toy_pretrain
    fine-tuning   finetune (the NFNet fine-tuning recipe; the fine-tuning job's default)
    evaluation    evaluate (the evaluation job's default)
    sweeps        sweep_toy (arg: smoke)
"""
