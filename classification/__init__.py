"""ImageNet-style pretraining and validation of FEC with timm's training parts.

``classification.train`` (training, DDP through ``torchrun``), ``classification.validate`` (top-1/top-5),
``classification.data`` (checked ImageFolder datasets), ``classification.toy_data`` (the generated demo data).
"""
