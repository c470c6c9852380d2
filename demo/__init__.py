"""The offline demo's own pieces: the pretrained synthetic base it starts from (``demo.base``).

A top-level package like the commands (train.py, evaluate.py, export.py): it may import any of ours.
"""
