"""The typed config schema (:mod:`.schema`), its composition with errors naming the key
(:mod:`.compose`) and the config tree shipped with the package (``mrpo/conf``,
:data:`CONFIG_DIR`)."""

from mrpo.config.schema import (
    CONFIG_DIR,
    EvalRunConfig,
    TrainConfig,
    register_configs,
    to_dataclass,
)

__all__ = ["CONFIG_DIR", "EvalRunConfig", "TrainConfig", "register_configs", "to_dataclass"]
