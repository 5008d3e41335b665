"""Declarative detection policies (`policies/*.yaml`), validated with pydantic."""

from bot.policy.loader import PolicyError, load_policies
from bot.policy.schema import EffectivePolicy, PolicySet, Rule

__all__ = ["EffectivePolicy", "PolicyError", "PolicySet", "Rule", "load_policies"]
