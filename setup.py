"""ttc_jax: scaling test-time compute in JAX. Install with `pip install -e .[test]`."""

from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "numpy==2.4.6",
    "absl-py==2.5.1",
    "ml_collections==1.1.0",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "sympy==1.14.0",  # MATH grading (a whitelist parser builds its expressions)
]

EXTRAS = {
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "hypothesis==6.170.17",
        "ruff==0.17.6",
        "scipy==1.17.1",
        "nbclient==0.11.0",  # runs notebooks/colab_demo.ipynb in the tests
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        # Hugging Face interop references (tests/test_interop*.py): CPU torch only.
        "torch==2.13.0",
        "transformers==5.24.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "jinja2==3.1.6",
        # real Llama 3 / Qwen2 vocabularies, read from the GGUF vocab files (interop/real_vocab.py)
        "gguf==0.19.0",
        # TPU compile-only topologies for the planning tool's tests (tests/test_plan.py)
        "libtpu==0.0.42.*",
    ],
    # AOT-compiles for TPU topologies (launch/plan.py) and runs on TPU VMs; the libtpu of
    # jax 0.10.2 (what `jax[tpu]==0.10.2` pins)
    "tpu": ["libtpu==0.0.42.*"],
    # Hugging Face interop; transformers + torch are only a test-time reference.
    "hf": [
        "tokenizers==0.23.3",
        "jinja2==3.1.6",  # the model folders' own chat templates
    ],
}

setup(
    name="ttc_jax",
    version="0.1.0",
    description="Scaling test-time compute with JAX: search, parallelism, distillation.",
    packages=find_packages(include=["ttc_jax", "ttc_jax.*"]),
    package_data={"ttc_jax": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
