"""Scenarios: one shared backbone checkpoint, and per scenario a LoRA adapter (peft) with its own small heads.

What a scenario trains and keeps (the adapter checkpoint holds only these):
- LoRA matrices on the recommender's own linear layers, ADAPTER_TARGETS: the item text projection (and the lexical
  one if the backbone has it), the query projection and each transformer block's feed-forward pair. The attention
  projections stay shared: nn.MultiheadAttention reads their weights directly, past any adapter's forward.
- its heads, HEAD_PREFIXES: the catalog's own ID table and item biases (another catalog needs other rows), the
  final norm of the user state, and the behaviour head with its feature standardisation (stage 2 fits it anew).
The text encoder is the backbone's, frozen: the scenario's catalog is embedded by it once and cached.

While training, LoRA runs as peft's layers; evaluation merges them into the weights first (set_merged), since the
transformer's fast inference path reads linear1/linear2's weights directly and would skip an unmerged adapter.
A loaded scenario is merged and unwrapped (merge_and_unload): a plain RecommenderNet, served as any other.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from model.recommender import RecommenderNet

ADAPTER_TARGETS = ("item_text_proj", "item_lexical_proj", "query_proj", "linear1", "linear2")
HEAD_PREFIXES = ("item_id.", "item_bias.", "norm.", "behaviour_head.", "feature_mean", "feature_std")
CATALOG_PREFIXES = ("item_id.", "item_bias.")  # rows per catalog item: kept from the backbone only for its catalog
LORA_MARK = "lora_"


def weights_checksum(config: dict) -> str:
    """A checksum of a checkpoint's weights (network and encoder), from the file hashes its config.json lists.

    The item table and events are left out: the same weights served with other data are the same backbone.
    """
    weights = {name: digest for name, digest in config.get("files", {}).items()
               if name.endswith(".safetensors") and (name.startswith("encoder/") or "/" not in name)
               and name != "item_vectors.safetensors"}
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()


def backbone_weights(weights: dict[str, torch.Tensor], same_catalog: bool) -> dict[str, torch.Tensor]:
    """The part of a backbone's saved weights a scenario starts from: all but its heads (its ID rows too when the
    scenario's catalog is the backbone's, item for item)."""
    kept = {}
    for name, value in weights.items():
        if name.startswith(CATALOG_PREFIXES):
            if same_catalog:
                kept[name] = value
        elif not name.startswith(HEAD_PREFIXES):
            kept[name] = value
    return kept


def add_adapter(net: RecommenderNet, rank: int) -> int:
    """Put LoRA (rank `rank`) on ADAPTER_TARGETS and make only it and the heads trainable; returns that count."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, _ in _own_modules(net)}
    targets = [t for t in ADAPTER_TARGETS if t in present]
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    inject_adapter_in_model(lora, net)
    for name, parameter in net.named_parameters():
        trainable = LORA_MARK in name or name.startswith(HEAD_PREFIXES)
        if name.startswith(CATALOG_PREFIXES[0]) and not net.config.use_id_embedding:
            trainable = False  # a text-only model keeps its ID table at zero
        parameter.requires_grad_(trainable and not name.startswith("encoder."))
    return trainable_parameters(net)


def trainable_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def adapter_state(net: RecommenderNet) -> dict[str, torch.Tensor]:
    """What an adapter checkpoint stores: the LoRA matrices and the heads, by their names in the adapted net."""
    return {name: value.detach().cpu().contiguous() for name, value in net.state_dict().items()
            if not name.startswith("encoder.") and (LORA_MARK in name or name.startswith(HEAD_PREFIXES))}


def has_adapter(net: RecommenderNet) -> bool:
    return any(True for _ in _lora_layers(net))


def set_merged(net: RecommenderNet, merged: bool) -> None:
    """Fold the adapters into the weights (for evaluation) or take them out again (to go on training)."""
    for _, layer in _lora_layers(net):
        if merged and not layer.merged:
            layer.merge()
        elif not merged and layer.merged:
            layer.unmerge()


def merge_and_unload(net: RecommenderNet) -> RecommenderNet:
    """Merge every adapter into its layer and put the plain layer back: the net no longer knows of peft."""
    for name, layer in list(_lora_layers(net)):
        if not layer.merged:
            layer.merge()
        parent_name, _, attribute = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attribute, layer.get_base_layer())
    return net


def _own_modules(net: RecommenderNet):
    """The recommender's modules, the text encoder's left out (its own tuning is another matter)."""
    return ((name, module) for name, module in net.named_modules() if name and not name.startswith("encoder"))


def _lora_layers(net: RecommenderNet):
    from peft.tuners.lora import LoraLayer

    return ((name, module) for name, module in _own_modules(net) if isinstance(module, LoraLayer))
