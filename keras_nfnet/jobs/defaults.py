"""Every field of every job's config, with its default and type: the schema the config files start from.

A config file (keras_nfnet/configs/*.py) returns one of these with some fields changed; `--config.<field>=value`
on the command line changes them again, type-checked by ml_collections (an int field refuses "1.5").
"""
import ml_collections


def pretrain():
    c = ml_collections.ConfigDict()
    # model
    c.variant = "S0"
    c.image_size = 0               # train px; 0 = the variant's train resolution
    c.eval_image_size = 0          # held-out px; 0 = the variant's test resolution
    c.stochastic_depth_rate = 0.0
    c.dropout_rate = -1.0          # < 0 = the variant's
    # data
    c.corpus = ""
    c.train_split = "train"
    c.heldout_split = "holdout"
    c.crop = True
    c.flip = True
    c.on_bad_record = "raise"      # raise: stop naming the record | skip: weight 0, counted per reason
    c.verify_checksums = True      # SHA-256 of every shard read, at a run's first open (docs/data.md)
    # optimisation (NFNET_SPEC.md section 4)
    c.optimizer = "sgd"            # sgd: the NFNet recipe (Nesterov SGD, coupled weight decay, AGC) | adamw: the
                                   # ViT baseline's (decoupled weight_decay, global-norm clip 1, AGC off)
    c.global_batch_size = 64
    c.epochs = 1.0                 # epoch budget; may be fractional; the cosine schedule spans it
    c.base_learning_rate = 0.1     # per 256 examples; peak = base * batch / 256
    c.warmup_epochs = 0.0
    c.momentum = 0.9
    c.weight_decay = 1e-6
    c.agc_clip = 0.01              # <= 0 turns AGC off
    c.label_smoothing = 0.0
    c.seed = 0
    _execution(c)
    c.tpu_address = ""
    c.precision = "auto"           # auto (bf16 on TPU/GPU, fp32 on CPU) | float32 | mixed_bfloat16
    c.steps_per_execution = 1
    c.jit_compile = False
    # bookkeeping
    c.checkpoint_every_steps = 100
    c.keep_checkpoints = 3
    c.eval_every_steps = 500
    c.log_every_steps = 10
    c.peak_flops_per_device = 0.0  # FLOP/s of one device for MFU; 0 = measure it at start
    c.max_steps = 0                # stop early at this step (keeps the schedule of the full budget); 0 = off
    return c


def finetune():
    """The NFNet fine-tuning recipe ([NF]'s JFT fine-tuning, scaled to small batches; NFNET_SPEC.md section 4)."""
    c = ml_collections.ConfigDict()
    # what to start from
    c.source = ""                  # pretrain workdir | checkpoint dir | .keras file | preset dir
    c.from_scratch = False         # no source: train `variant` from random initialisation (the baseline)
    c.variant = ""                 # architecture when training from scratch (ignored otherwise)
    # data
    c.corpus = ""
    c.train_split = "train"
    c.eval_split = ""              # "" = the first of the evaluation splits the corpus has (test, validation, holdout)
    c.image_size = 0               # fine-tuning px; 0 = the variant's test resolution (higher than pretraining)
    c.eval_image_size = 0          # evaluation px; 0 = image_size + 32 with crop (NFNET_SPEC), else image_size
    c.crop_fraction = 0.0          # evaluation view: resize to eval px / crop_fraction, centre-crop eval px;
                                   # 0 = size / (size + 32) with crop (the papers' view), 1.0 (whole image) without
    c.crop = True                  # Inception crop (8-100% of the area): off when the content fills the frame
    c.flip = True                  # horizontal flip: off when mirrored images mean something else (text, digits)
    c.randaugment_layers = 0
    c.randaugment_magnitude = 10.0
    c.mixup_cutmix = False
    c.on_bad_record = "raise"      # raise | skip (weight 0, counted per reason in result.json); docs/data.md
    c.verify_checksums = True      # SHA-256 of the corpus files read, before training
    c.repeats = 1                  # repeated augmentation multiplicity K; steps unchanged (compute kept equal)
    # recipe
    c.epochs = 10.0
    c.global_batch_size = 64
    c.base_learning_rate = 0.1     # per 256 examples
    c.warmup_epochs = 1.0
    c.momentum = 0.9
    c.weight_decay = 1e-5
    c.agc_clip = 0.01              # <= 0 turns AGC off
    c.label_smoothing = 0.0
    c.dropout_rate = 0.25          # < 0 = the variant's
    c.stochastic_depth_rate = 0.1
    c.ema = True
    c.ema_max_decay = 0.9999
    c.sam_rho = 0.05               # <= 0 turns SAM off
    c.sam_reduction = "global"
    c.seed = 0
    _execution(c)
    c.eval_batch_size = 0          # 0 = global_batch_size
    # bookkeeping
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.max_steps = 0                # stop early at this step (keeps the schedule of the full budget); 0 = off
    return c


def evaluate():
    c = ml_collections.ConfigDict()
    c.model = ""                   # .keras file | fine-tuning or pretraining workdir | checkpoint dir | preset dir
    c.corpus = ""
    c.split = ""                   # "" = the first of the evaluation splits the corpus has
    c.image_size = 0               # 0 = the model's own evaluation size, else the variant's test resolution
    c.crop_fraction = 0.0          # 0 = the model's own evaluation view
    c.batch_size = 64
    c.on_bad_record = "raise"
    c.verify_checksums = True
    _execution(c)                  # the model is loaded in the strategy's scope; each batch split over replicas
    return c


def sweep():
    c = ml_collections.ConfigDict()
    c.name = "sweep"
    c.pretrain_config = ""         # every run's base config: a config file path or the short name of a shipped one
    c.variants = ("S0",)           # smallest model first: the smart LR search hands best LRs up the ladder
    c.epoch_budgets = (1.0,)
    c.lr_grid = (0.1,)             # values of the runs' base_learning_rate (per 256 examples), a factor-2 grid
    c.initial_lr = 0.1             # where the smart search of the first (model, budget) starts
    c.lr_search = "smart"          # "smart" (the paper's neighbour search) or "grid" (every LR for every cell)
    c.shared = ml_collections.ConfigDict()  # pretraining config fields every run gets (e.g. corpus)
    c.compute = "flops"            # x-axis of the fits: "flops" or "device_hours"
    c.size = "params"              # model size axis of the allocation fit: "params" or "macs_per_image"
    c.irreducible = False          # fit the loss frontier with an irreducible term
    c.n_bootstrap = 1000
    c.parallel_runs = 1            # runs at once in --mode=run (2 on a 2-core CPU: a small run uses about one core)
    return c


def compare():
    c = ml_collections.ConfigDict()
    # Either pretrain `models` here with the `pretrain` config ...
    c.models = ("",)               # NFNet and ViT names, e.g. ("S0", "ViT-0"); ("",) = take the runs from sweeps
    c.pretrain = pretrain()        # the whole pretraining config (variant set per model)
    # ... or fine-tune the best-LR runs of finished sweeps.
    c.sweeps = ("",)               # sweeps' workdirs (e.g. one NFNet sweep, one ViT sweep)
    c.budgets = (1.0,)             # epoch budgets whose best-LR runs are fine-tuned (every model of every sweep)
    c.finetune = finetune()        # the whole fine-tuning config (source set per model)
    return c


def _execution(c):
    c.strategy = "default"         # default | mirrored | multiworker | tpu
    c.num_cpu_devices = 2          # replicas for 'mirrored' on a machine without GPUs
    c.verbose = 1                  # progress lines (> 0), none (0)
