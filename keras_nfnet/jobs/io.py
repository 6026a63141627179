"""The few path operations the job layer makes (workdir, saved config, result file), in one place."""
import json
import os


def join(*parts):
    return os.path.join(*parts)


def exists(path):
    return os.path.exists(path)


def isdir(path):
    return os.path.isdir(path)


def makedirs(path):
    os.makedirs(path, exist_ok=True)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, value):
    """Written atomically: a reader never sees a partial file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
