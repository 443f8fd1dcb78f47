"""mbaf_jax: memory-based multimodal fusion (DMF and MBAF) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="mbaf_jax",
    version="0.1.0",
    description=("Dual Memory Fusion and Memory Based Attentive Fusion for "
                 "multimodal learning, in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mbaf_jax", "mbaf_jax.*", "train", "train.*", "configs"]),
    package_data={"mbaf_jax": ["**/*.json", "**/*.txt"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.12.6",  # mbaf_jax.nnx: nnx.Optimizer(wrt=), nnx.view, nnx.capture, Variable.get_value
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "chex>=0.1.87",
        "transformers>=4.40",
        "tokenizers>=0.19",
        "librosa>=0.10",
        "soundfile>=0.12",
        "numpy>=1.26",
        "absl-py>=2.0",
        "ml-collections>=0.1.1",
        "safetensors>=0.4",
        "wfdb>=4.1",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        # scikit-learn ships the real digits data of examples/fusion_study.py and its tests.
        # hypothesis drives the property-based loader fuzzing (tests/test_fuzz_loaders.py).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-learn>=1.3", "hypothesis>=6.100"],
        # PyTorch peer of benchmarks/bench_vs_torch.py and tests/test_torch_reference.py
        # (both skip without it); not needed by the library.
        "bench": ["torch==2.13.0"],
    },
)
