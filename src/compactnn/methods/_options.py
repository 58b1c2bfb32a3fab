"""Options shared by the methods' configs: the bounds they reuse, the rule tables of the
options several methods have in common (their fine-tuning, ``layers``, ``seed``) and the SGD
options with their rules (:class:`SGDOptions`, a base of the training methods' configs).

A config spreads a table into its own ``rules`` at the place of those options, so the order of
the checks (the first failing one is reported) stays the order of the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from compactnn._validation import Rule, check_float, check_int, check_names, rule

__all__ = ["FINETUNE_RULES", "FRACTION", "LAYERS", "POSITIVE", "SEED", "SGDOptions"]

#: bounds of a float > 0
POSITIVE = MappingProxyType({"min_value": 0.0, "min_inclusive": False})
#: bounds of a float in [0, 1]
FRACTION = MappingProxyType({"min_value": 0.0, "max_value": 1.0})

#: ``layers``: dotted layer names, or None for the method's default layers
LAYERS: Rule = rule(check_names, optional=True)
#: ``seed``: an int >= 0
SEED: Rule = rule(check_int, min_value=0)


@dataclass(frozen=True)
class SGDOptions:
    """The SGD of a training method, shared by the configs of ``ssr``, ``pgt``, ``admm-sparse``
    and the criterion baselines: its fields and their ``rules``, which each config spreads into
    its own (a config whose paper uses other defaults redeclares the field).

    Attributes:
        lr: learning rate > 0 of the method's SGD.
        momentum: momentum in [0, 1] of the method's SGD.
        weight_decay: L2 weight decay >= 0 of the method's SGD.
    """

    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4

    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            "lr": rule(check_float, **POSITIVE),
            "momentum": rule(check_float, **FRACTION),
            "weight_decay": rule(check_float, min_value=0.0),
        }
    )

    def sgd(self, **changes: float) -> dict[str, float]:
        """``lr``, ``momentum`` and ``weight_decay`` as keywords of a training run (some
        replaced, e.g. a fine-tuning's own ``lr``)."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            **changes,
        }


#: the fine-tuning after the cut: epochs, learning rate, batches per epoch, distillation
FINETUNE_RULES: Mapping[str, Rule] = MappingProxyType(
    {
        "finetune_epochs": rule(check_int, min_value=0),
        "finetune_lr": rule(check_float, **POSITIVE),
        "finetune_steps_per_epoch": rule(check_int, optional=True, min_value=1),
        "finetune_distill": rule(check_float, **FRACTION),
    }
)
