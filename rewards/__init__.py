"""Rewards: labelers (rule-based default, CheXbert), MCCS, format, CE-F1 and NLG terms, and their combiner.

This package never imports ``model`` or ``grpo``.
"""
