"""keras-nfnet: NFNets, Adaptive Gradient Clipping and a scaling-law toolkit for Keras 3."""
import setuptools

setuptools.setup(
    name="keras-nfnet",
    version="0.1.0",
    description="Normalizer-free ResNets (NFNet F0-F7+), AGC and scaling-law studies in Keras 3 / TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["keras_nfnet", "keras_nfnet.*"]),
    install_requires=[
        # Keras and TensorFlow: only the releases the test suite has passed on (keras 3.15.x with tensorflow
        # 2.20.x), because keras_nfnet/compat.py relies on private APIs of both that any release may change.
        # To widen: run the suite on the new release (tests/test_compat.py names any private call that moved),
        # then widen these, compat.TESTED_WITH and requirements_lock.txt together.
        "tensorflow>=2.20,<2.21",  # tf-models-official 2.20 pins TensorFlow to 2.20.x as well
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # undeclared by tensorflow-datasets, needed by tfds.load
        "tf-models-official>=2.20,<2.21",
        "tensorboard>=2.20",
        "absl-py",
        "ml_collections",  # job configs: Python files with --config.<field>=value overrides (config_flags)
        "numpy",
        "google-crc32c",  # CRC-32C of TFRecord framing, checked on every random-access read
        "pillow",  # fast JPEG/PNG encoding in the corpus producers
        "scipy",  # curve fitting with uncertainty for the scaling-law analysis
        "matplotlib",  # scaling-law plots
        "werkzeug",  # HTTP request parsing and routing for the local TF-Serving-compatible server
        "waitress",  # production WSGI server behind it
        "tensorflow-serving-api>=2.20,<2.21",  # PredictionLog protos for TF Serving's warm-up file (matches TF)
        # Corpora, checkpoints, logs and exports in a bucket (keras_nfnet/storage.py): fsspec, with gcsfs for gs://.
        # Required rather than an extra: a TPU-pod user's data lives in gs://, and a missing client would only
        # show up as an error after the job started.
        "fsspec",
        "gcsfs",
        "scikit-learn",  # real images that ship in the wheel (digits) for the fine-tuning demo and tests
    ],
    entry_points={
        "console_scripts": [
            "nfnet-pretrain=keras_nfnet.jobs.pretrain:main",
            "nfnet-finetune=keras_nfnet.jobs.finetune:main",
            "nfnet-evaluate=keras_nfnet.jobs.evaluate:main",
            "nfnet-sweep=keras_nfnet.jobs.sweep:main",
            "nfnet-compare=keras_nfnet.jobs.compare:main",
        ],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout",
            "jax[cpu]",
            "scikit-image",
            "gcp-storage-emulator",  # a GCS server on 127.0.0.1 for the remote-storage tests (tests/gcs_emulator.py)
            "packaging",  # version specifiers in tests/test_build_file.py and scripts/lock_requirements.py
        ],
    },
)
