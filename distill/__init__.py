"""SoundCTM distillation (`accelerate launch distill/train.py`): the training program and what only training needs.
Run from the repository root; not installed with the `soundctm` package."""
