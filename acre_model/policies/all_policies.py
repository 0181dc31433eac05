"""Imports every policy module so each registers itself."""
from . import acre, acre_l1, fixed_k, full, l1_only, random_k, token_budget  # noqa: F401
