"""SGD with Nesterov momentum and coupled weight decay, as the NFNet recipe specifies, and the recipe assembled.

The NFNet update (NFNET_SPEC section 3), after AGC has clipped the summed gradient g of parameter p:

    g <- g + wd * p            (coupled decay, only for kernels)
    m <- momentum * m + g
    p <- p - lr * (g + momentum * m)     (Nesterov; p <- p - lr * m without Nesterov)

Why not `keras.optimizers.SGD(weight_decay=...)`: Keras applies weight decay decoupled, `p -= lr * wd * p` before
the momentum update, so the decay never enters the momentum buffer, and its Nesterov form keeps `lr` inside the
buffer (m <- momentum * m - lr * g), which differs from the above whenever the learning rate changes. Neither can
be configured away, so `CoupledDecaySGD` is the smallest optimizer that computes the reference update.

Model code rule: keras.ops only.
"""
import re

import keras
from keras import ops

from keras_nfnet import compat
from keras_nfnet.agc import AGC, DEFAULT_EXCLUDE, _check_positive, _path
from keras_nfnet.ema import EMAWarmup
from keras_nfnet.schedules import warmup_cosine

# Variables named `kernel`: WSConv2D, squeeze-excite Dense and classifier kernels. Never gains, biases, skip gains.
DEFAULT_DECAY_FILTER = r"(^|/)kernel$"


@keras.saving.register_keras_serializable(package="keras_nfnet")
class CoupledDecaySGD(EMAWarmup, keras.optimizers.Optimizer):
    """SGD with (Nesterov) momentum and weight decay added to the gradient, as in the NFNet papers.

    Args:
        learning_rate: float, `LearningRateSchedule` (see `keras_nfnet.schedules.warmup_cosine`) or callable.
        momentum: in [0, 1). 0.9 in the recipe.
        nesterov: Nesterov momentum (the recipe's choice).
        weight_decay: coupled decay coefficient (2e-5 ImageNet, 1e-6 JFT pretraining); 0 disables it.
        decay_filter: which variables decay: a regular expression searched in each variable's path, or a
            callable `path -> bool`. The default decays variables named `kernel`. With weight_decay > 0 a filter
            that matches no variable is an error.
        use_ema, ema_momentum: weight averaging with the NFNet warm-up (`keras_nfnet.ema`); ema_momentum is
            the maximum decay (0.99999 in the recipe).
        Other keyword arguments go to `keras.optimizers.Optimizer` (name, loss_scale_factor, ...).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.0,
                 decay_filter=DEFAULT_DECAY_FILTER, name="coupled_decay_sgd", **kwargs):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1); received momentum={momentum!r}.")
        weight_decay = 0.0 if weight_decay is None else weight_decay
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a number >= 0; received weight_decay={weight_decay!r}.")
        if not (isinstance(decay_filter, str) or callable(decay_filter)):
            raise ValueError(
                f"decay_filter must be a regular expression (str) or a callable path -> bool; "
                f"received {decay_filter!r}."
            )
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        # Decay is coupled (see update_step); Keras's decoupled decay stays off.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.coupled_weight_decay = float(weight_decay)
        self.decay_filter = decay_filter

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if isinstance(self.decay_filter, str):
            pattern = re.compile(self.decay_filter)
            decays = [pattern.search(_path(v)) is not None for v in variables]
        else:
            decays = [bool(self.decay_filter(_path(v))) for v in variables]
        if self.coupled_weight_decay > 0 and not any(decays):
            sample = ", ".join(_path(v) for v in variables[:6])
            raise ValueError(
                f"decay_filter={self.decay_filter!r} matches none of the {len(variables)} variables "
                f"(for example: {sample}); set weight_decay=0 or pass a filter that names the kernels to decay."
            )
        self._decays = decays
        self.decayed_paths = [_path(v) for v, d in zip(variables, decays) if d]
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum > 0 else []

    def update_step(self, gradient, variable, learning_rate):
        index = compat.variable_index(self, variable)
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay > 0 and self._decays[index]:
            g = g + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        if self.momentum == 0:
            self.assign_sub(variable, lr * g)
            return
        momentum = ops.cast(self.momentum, variable.dtype)
        m = self.momentums[index]
        m_new = momentum * m + g
        self.assign(m, m_new)
        step = g + momentum * m_new if self.nesterov else m_new
        self.assign_sub(variable, lr * step)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update({
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.coupled_weight_decay,
            "decay_filter": self.decay_filter if isinstance(self.decay_filter, str)
            else keras.saving.serialize_keras_object(self.decay_filter),
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("decay_filter"), dict):
            config["decay_filter"] = keras.saving.deserialize_keras_object(
                config["decay_filter"], custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)


def nfnet_optimizer(base_learning_rate=0.1, batch_size=4096, total_steps=None, warmup_steps=0,
                    weight_decay=2e-5, clip_factor=0.01, momentum=0.9, use_ema=False, ema_max_decay=0.99999,
                    exclude=DEFAULT_EXCLUDE):
    """The NFNet recipe: AGC(CoupledDecaySGD(Nesterov, warmup + cosine to zero)). Create it in strategy.scope().

    Peak learning rate = base_learning_rate * batch_size / 256. `clip_factor=None` leaves AGC out.
    """
    if total_steps is None:
        raise ValueError("nfnet_optimizer needs total_steps (the length of the cosine schedule, in steps).")
    schedule = warmup_cosine(base_learning_rate, batch_size, total_steps, warmup_steps)
    sgd = CoupledDecaySGD(schedule, momentum=momentum, nesterov=True, weight_decay=weight_decay,
                          use_ema=use_ema, ema_momentum=ema_max_decay)
    if clip_factor is None:
        return sgd
    _check_positive("clip_factor", clip_factor)
    return AGC(sgd, clip_factor=clip_factor, exclude=exclude)


def adamw_optimizer(base_learning_rate=4e-3, batch_size=4096, total_steps=None, warmup_steps=0, weight_decay=0.1,
                    global_clipnorm=1.0):
    """The ViT baseline's recipe (Dosovitskiy et al. 2021): AdamW (beta 0.9, 0.999; decoupled weight decay, Keras's
    `p -= lr * wd * p`), gradients clipped to global norm 1, the same warm-up + cosine schedule and peak
    = base_learning_rate * batch_size / 256 as `nfnet_optimizer`."""
    if total_steps is None:
        raise ValueError("adamw_optimizer needs total_steps (the length of the cosine schedule, in steps).")
    schedule = warmup_cosine(base_learning_rate, batch_size, total_steps, warmup_steps)
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay, beta_1=0.9, beta_2=0.999,
                                  global_clipnorm=global_clipnorm or None)
