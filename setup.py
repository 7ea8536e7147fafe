from setuptools import find_packages, setup

# torch is deliberately a range that the CPU wheel on disk (2.13.0) satisfies: install torch first
# (the Makefile does), otherwise pip resolves a multi-GB CUDA build.
install_requires = [
    "torch>=2.4",
    "transformers>=5.0,<6",
    "accelerate>=1.10",
    "datasets>=3.0",
    "evaluate>=0.4",
    "huggingface_hub>=1.0",
    "peft>=0.15",
    "safetensors>=0.4",
    "jinja2>=3.1",
    "matplotlib>=3.7",
    "pyyaml>=6.0",
    "numpy>=1.24",
]

extras = {
    "deepspeed": ["deepspeed>=0.16"],
    "compressed": ["compressed-tensors>=0.10"],
    "gguf": ["gguf>=0.10"],
    "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6", "pandas>=2.0", "sentencepiece"],
}
extras["dev"] = sorted({dep for group in extras.values() for dep in group})

setup(
    name="hf_junkdna",
    version="0.1.0.dev0",
    description="Prune, fine-tune and publish sparse Hugging Face models; measure how much sparsity each task tolerates.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # model_cards/ lives at the top of the repo (templates are reviewed like docs) but ships inside the
    # package as hf_junkdna.model_cards, so cards render from an installed wheel too.
    package_dir={"": "src", "hf_junkdna.model_cards": "model_cards"},
    packages=find_packages("src") + ["hf_junkdna.model_cards"],
    package_data={"hf_junkdna.model_cards": ["*.md", "*.jinja"], "hf_junkdna": ["data/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["junkdna=hf_junkdna.cli:main"]},
)
