"""babelora.adapters: one expert layer for LoRA, language experts and MoLoRA.

Quick use:
    handle = inject(model, MoLoRAConfig(languages=("de", "fr"), num_shared=1))
    with handle.routing(langs=["de", "fr", "de"]):
        loss = model(**batch).loss + handle.aux_loss()
    export_peft(handle, "out/de", lang="de")      # shared + German experts as one PEFT adapter
"""

from babelora.adapters.config import (
    LoRAConfig,
    MoLoRAConfig,
    language_experts,
    lora_only,
)
from babelora.adapters.context import RoutingContext
from babelora.adapters.expert_linear import ExpertLoRALinear
from babelora.adapters.inject import PRESETS, AdapterHandle, find_targets, inject
from babelora.adapters.peft_io import (
    export_peft,
    load_adapter_set,
    load_language_adapters,
    load_peft_expert,
    read_peft_adapter,
    save_adapter_set,
    write_peft_adapter,
)
from babelora.adapters.routing import ROUTERS, RouterInputs, Routing

__all__ = [
    "PRESETS",
    "ROUTERS",
    "AdapterHandle",
    "ExpertLoRALinear",
    "LoRAConfig",
    "MoLoRAConfig",
    "RouterInputs",
    "Routing",
    "RoutingContext",
    "export_peft",
    "find_targets",
    "inject",
    "language_experts",
    "load_adapter_set",
    "load_language_adapters",
    "load_peft_expert",
    "lora_only",
    "read_peft_adapter",
    "save_adapter_set",
    "write_peft_adapter",
]
