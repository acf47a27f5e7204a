"""deteclap: DETECLAP (CAV-MAE + audio-visual object labels) with a fast DALI data path."""
from setuptools import find_packages, setup

EXTRAS = {
    # 2.4: s3:// index files (readers took s3:// tars since 1.38); the cuda130 wheel on CUDA 13 machines
    "dali": ["nvidia-dali-cuda120>=2.4"],
    "train": ["deepspeed>=0.14", "tensorboard>=2.10"],
    "labels": ["ultralytics>=8.1", "msclap>=1.3"],
    # shards and inputs in object storage (fsspec URLs); gs:// needs gcsfs besides
    "s3": ["fsspec>=2023.1", "s3fs>=2023.1"],
    # --distributor ray (deteclap.distribute)
    "ray": ["ray>=2.9"],
    "search": ["faiss-cpu>=1.7"],
    # moto's S3 server on the loopback address for the storage tests
    "dev": ["pytest>=7", "ruff>=0.4", "kaldi-native-fbank>=1.19", "scipy>=1.10", "import-linter>=2.0",
            "moto[server]>=5.0"],
}
EXTRAS["all"] = sorted({req for name in ("dali", "train", "labels", "search", "s3", "ray") for req in EXTRAS[name]})

setup(
    name="deteclap",
    version="0.1.0",
    description="DETECLAP: audio-visual representation learning with object labels (CAV-MAE + label heads)",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # benchmarks/ runs from a checkout (`python -m benchmarks`); it is not installed as a
    # top-level package of that generic name.
    packages=find_packages(include=["deteclap", "deteclap.*", "dali_pipes", "dali_pipes.*"]),
    package_data={"deteclap": ["assets/*"]},
    install_requires=[
        "torch>=2.1,<2.16",
        "torchvision>=0.16",
        "numpy>=1.24",
        "timm>=0.9",
        "av>=11",
        "soundfile>=0.12",
        "webdataset>=0.2.80",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["deteclap=deteclap.__main__:main"]},
)
