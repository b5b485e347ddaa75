from setuptools import find_packages, setup

setup(
    name="ex2l-domainbed",
    version="0.1.0",
    description=(
        "eXplaining to Learn (eX2L) as a DomainBed plugin, with a clean-room, "
        "DomainBed-compatible harness"
    ),
    python_requires=">=3.9",
    packages=find_packages(include=["domainbed", "domainbed.*", "ex2l_domainbed", "ex2l_domainbed.*"]),
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy",
        "Pillow",
        "tqdm",
        "submitit",
        "scikit-image",  # real photographs and textures behind Spawrious-Lite
        "matplotlib",  # Grad-CAM figures (ex2l_domainbed.viz)
    ],
    package_data={"ex2l_domainbed.datasets": ["weights/*.pt", "weights/*.json"]},
    # captum: an independent Grad-CAM implementation the tests compare against.
    extras_require={"test": ["pytest", "captum"]},
    entry_points={
        "domainbed.plugins": ["ex2l = ex2l_domainbed.plugin:register"],
    },
)
