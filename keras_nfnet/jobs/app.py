"""The command line of every job: absl flags, config flags (ml_collections' config_flags, which here also accept a
shipped config's short name), `--workdir`, and the exit codes:

    0    done (or stopped at max_steps)
    2    user error: one `error: ...` line (bad flag or config, damaged corpus, bad record, no intact checkpoint)
    3    training diverged (a NaN/inf loss; the last good checkpoint is left intact)
    143  preempted (SIGTERM: a checkpoint was written; run the same command again to go on)
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

from keras_nfnet import cli
from keras_nfnet.jobs import config as config_lib

FLAGS = flags.FLAGS
DIVERGED, PREEMPTED = 3, 143
_CONFIG_FLAGS = {}  # name -> default config file of the config flags defined in this process


class _ConfigFileParser(flags.ArgumentParser):
    """Parses a config flag's value as config_flags does (the file's get_config(arg)), plus short names of shipped
    configs and one-line errors (keras_nfnet.jobs.config.load)."""

    def parse(self, argument):
        return config_lib.load(argument)

    def flag_type(self):
        return "config object"


def define_config_flag(name, default_config=None, help_string="config"):
    """A config flag: a config file (path.py[:arg]) or a shipped config's name, with --<name>.<field>=value
    overrides. Required when it has no default."""
    if name in FLAGS:  # already defined by an earlier call in this process
        return
    default = config_lib.resolve(default_config) if default_config else None
    # Defined without a default: config_flags would apply argv's overrides to it now, outside _parse's error
    # handling (an unknown field would be a traceback). _parse names the default on the command line instead.
    config_flags.DEFINE_config_file(
        name, None, f"{help_string}: a config file (path.py[:arg]) or a shipped config's name "
        f"({', '.join(config_lib.shipped())}); override fields with --{name}.<field>=value"
        + (f" (default {os.path.basename(default)})" if default else ""), lock_config=True)
    FLAGS[name].parser = _ConfigFileParser()
    if default is None:
        flags.mark_flag_as_required(name)
    _CONFIG_FLAGS[name] = default


def define_flags(default_config=None, workdir_help="the job's directory: checkpoints, TensorBoard, result.json",
                 workdir_required=True):
    """--config (the job's config) and --workdir."""
    define_config_flag("config", default_config, "the job's config")
    if "workdir" not in FLAGS:
        flags.DEFINE_string("workdir", None, workdir_help, required=workdir_required)


def _parse(argv):
    # A process that runs several jobs (a test driver) parses again: drop the override flags of the last parse.
    for name in [n for n in FLAGS if "." in n and n.split(".")[0] in _CONFIG_FLAGS]:
        delattr(FLAGS, name)
    # Name a default config explicitly, so that config_flags defines its --<name>.<field> overrides in this parse.
    given = {a.split("=")[0].lstrip("-") for a in argv[1:] if a.startswith("-")}
    argv = argv[:1] + [f"--{n}={d}" for n, d in _CONFIG_FLAGS.items() if d and n not in given] + argv[1:]
    try:
        return FLAGS(argv)
    except flags.Error as error:
        # absl stops at the first bad value: check each config override on its own to name them all at once.
        problems = _override_problems(argv) or [str(error)]
        sys.exit(cli.report(f"{'; '.join(problems)} (--helpfull lists the flags)", 2))
    except (AttributeError, KeyError) as error:  # config_flags: an override of a field the config does not have
        field = str(error).strip("'\"")
        sys.exit(cli.report(f"unknown config field {field!r} (in an override --<config>.{field}=...); "
                            f"{_fields_of(argv)}", 2))


def _override_problems(argv):
    """The error of every `--<config>.<field>=value` of argv that fails on its own (each parsed alone, with the
    --<config> flags of argv, in a scratch set of flags)."""
    names = tuple(_CONFIG_FLAGS)
    bases = [a for a in argv[1:] if a.split("=")[0].lstrip("-") in names]  # _parse names the defaults too
    problems = []
    for arg in argv[1:]:
        head = arg.split("=")[0].lstrip("-")
        if "." not in head or head.split(".")[0] not in names:
            continue
        scratch = flags.FlagValues()
        for name in names:  # no default: the override flags are defined once, when --<name> is parsed
            config_flags.DEFINE_config_file(name, None, "", flag_values=scratch, lock_config=True)
            scratch[name].parser = _ConfigFileParser()
        try:
            scratch([argv[0]] + bases + [arg], known_only=True)
        except flags.Error as error:
            problems.append(str(error))
        except (AttributeError, KeyError, ValueError):
            continue  # reported by the full parse (unknown field) or the config's own validation
    return problems


def _fields_of(argv):
    """The fields of the configs named in argv, for an error message."""
    out = []
    for name in _CONFIG_FLAGS:
        specs = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
        try:
            out.append(f"--{name} has the fields {', '.join(sorted(config_lib.load(specs[-1])))}")
        except (ValueError, IndexError):
            continue
    return "; ".join(out)


def run(job_main):
    """Run `job_main(argv) -> exit status` as an absl app (keras_nfnet.cli reports user errors)."""
    cli.run(job_main, flags_parser=_parse)
