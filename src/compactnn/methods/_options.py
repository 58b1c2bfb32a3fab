"""Option rules shared by the methods' configs: the bounds they reuse and the rule tables of
the options several methods have in common (their SGD, their fine-tuning, ``layers``,
``seed``).

A config spreads a table into its own ``rules`` at the place of those options, so the order of
the checks (the first failing one is reported) stays the order of the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from compactnn._validation import Rule, check_float, check_int, check_names, rule

__all__ = ["FINETUNE_RULES", "FRACTION", "LAYERS", "POSITIVE", "SEED", "SGD_RULES"]

#: bounds of a float > 0
POSITIVE = MappingProxyType({"min_value": 0.0, "min_inclusive": False})
#: bounds of a float in [0, 1]
FRACTION = MappingProxyType({"min_value": 0.0, "max_value": 1.0})

#: ``layers``: dotted layer names, or None for the method's default layers
LAYERS: Rule = rule(check_names, optional=True)
#: ``seed``: an int >= 0
SEED: Rule = rule(check_int, min_value=0)

#: ``lr``, ``momentum``, ``weight_decay`` of a method's SGD
SGD_RULES: Mapping[str, Rule] = MappingProxyType(
    {
        "lr": rule(check_float, **POSITIVE),
        "momentum": rule(check_float, **FRACTION),
        "weight_decay": rule(check_float, min_value=0.0),
    }
)

#: the fine-tuning after the cut: epochs, learning rate, batches per epoch, distillation
FINETUNE_RULES: Mapping[str, Rule] = MappingProxyType(
    {
        "finetune_epochs": rule(check_int, min_value=0),
        "finetune_lr": rule(check_float, **POSITIVE),
        "finetune_steps_per_epoch": rule(check_int, optional=True, min_value=1),
        "finetune_distill": rule(check_float, **FRACTION),
    }
)
