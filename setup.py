"""grow_megatron: depth-growing LLM training on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="grow_megatron",
    version="0.1.0",
    description="Megatron-core training engine that grows Transformer depth during training (MIDAS, LIDAS)",
    python_requires=">=3.10",
    # kernels/ lives at the top of the repo (as the user asked) but is installed inside our
    # package: a different PyPI project already owns the top-level name `kernels`.
    packages=find_packages(include=["grow_megatron", "grow_megatron.*"]) + ["grow_megatron.kernels"],
    package_dir={"grow_megatron.kernels": "kernels"},
    package_data={"grow_megatron.data": ["assets/*"]},
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "triton>=3.2",
        "numpy",
        "pyyaml",
        "tqdm",
        "psutil",
        "filelock",
        "xxhash",
        "datasets",
        "tokenizers",
        "transformers",
        "safetensors",
        "tensorboard",
        "matplotlib",
    ],
    # wandb: optional (logging.wandb); the tests log to it offline. lm-eval[hf] (it brings
    # accelerate): the tests run the real harness on an export (plain lm-eval cannot run --model hf).
    # ruff: pinned, since tests/test_style.py checks lint and format and the rules move between releases.
    # Tested versions of all of these: constraints.txt (README's install passes it with -c).
    extras_require={
        "wandb": ["wandb"],
        # model.fp8: torchao's float8 training (emulated on CPU in the tests).
        "fp8": ["torchao>=0.18"],
        "test": [
            "pytest",
            "pytest-timeout",
            "wandb",
            "import-linter",
            "lm-eval[hf]>=0.4",
            "ruff==0.17.6",
            "torchao>=0.18",
        ],
    },
    entry_points={"console_scripts": ["grow-megatron=grow_megatron.cli:main"]},
)
