"""fec-backbone: FEC (Feature Extraction with Clustering, CVPR 2024) for timm, Detectron2 and smp."""
from setuptools import find_packages, setup

CONFIG_PACKAGES = ["fec_backbone.configs"]

setup(
    name="fec-backbone",
    version="0.1.0",
    description="FEC backbone for timm, Detectron2 and segmentation-models-pytorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["fec_backbone*", "d2_plugin*", "seg_plugin*", "classification*"])
    + CONFIG_PACKAGES,
    # The top-level configs/ folder ships inside the package as fec_backbone/configs/ (fec_backbone.model_zoo
    # finds it there in an installed copy, and in configs/ in a checkout).
    package_dir={"fec_backbone.configs": "configs"},
    package_data={"fec_backbone.configs": ["*/*.yaml"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0.31",
        "safetensors",
        "fvcore",
        "numpy",
        "pillow",
    ],
    extras_require={
        # Detectron2 itself is not on PyPI: run `python scripts/install_detectron2.py` after this extra.
        "d2": ["pycocotools>=2.0.7", "opencv-python-headless"],
        # OpenCV: the ADE20K pipeline decodes, resizes and distorts images as mmcv does (cv2)
        "seg": ["segmentation-models-pytorch>=0.5", "torchmetrics>=1.0", "tensorboard", "lightning>=2.5",
                "opencv-python-headless"],
        "dev": ["pytest>=7", "einops", "GitPython", "onnx", "onnxruntime", "onnxscript", "tensorboard", "matplotlib",
                "scikit-learn"],
    },
    entry_points={"console_scripts": ["fec=fec_backbone.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
