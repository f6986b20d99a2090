"""Installs the `mace` package: MACE with Magnitude-Modulated Equivariant Adapters."""
from setuptools import find_packages, setup

setup(
    name="mace-mmea",
    version="0.1.0",
    description="MACE interatomic potentials with Magnitude-Modulated Equivariant Adapters "
    "for parameter-efficient fine-tuning of foundation models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["mace", "mace.*"]),
    install_requires=[
        "torch>=2.0",
        "e3nn==0.4.4",
        "numpy",
        "ase",
        "torch-ema",
        "prettytable",
        "matscipy",
        "h5py",
        "python-hostlist",
        "pyyaml",
    ],
    extras_require={"dev": ["pytest", "matplotlib"]},
    entry_points={
        "console_scripts": [
            "mace_run_train=mace.cli.run_train:main",
            "mace_eval_configs=mace.cli.eval_configs:main",
            "mace_apply_adapter=mace.cli.apply_adapter:main",
            "mace_prepare_data=mace.cli.preprocess_data:main",  # upstream's name for it
            "mace_create_lammps_model=mace.cli.create_lammps_model:main",
        ]
    },
)
