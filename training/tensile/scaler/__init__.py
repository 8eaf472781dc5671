"""The scaler's policy core: how many nodes a running job should have, and why (issue 18).

Pure: no Kubernetes, Pulumi or torch import (training/importlinter.ini checks it), so the local
actuator and an in-cluster controller drive the same decisions (docs/design/scaler.md).
"""

from tensile.scaler.api import (Decision, JobState, NodeOffer, PendingWorkload, PoolMarket, ReasonKind,
                                TeamState)
from tensile.scaler.config import ScalerConfig, Trigger, TriggerAction, load_scaler_config
from tensile.scaler.policy import cooldown_s, decide, trigger_holds

__all__ = ["Decision", "JobState", "NodeOffer", "PendingWorkload", "PoolMarket", "ReasonKind", "ScalerConfig",
           "TeamState", "Trigger", "TriggerAction", "cooldown_s", "decide", "load_scaler_config", "trigger_holds"]
